"""What a non-editable install (the Dockerfile's `pip install .`) ships: every package."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_source_package_is_listed_for_installation() -> None:
    # setuptools installs only the listed packages: one left out is missing from the image
    # while every editable install (tests, CI) still finds it in the source tree.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {name: ROOT / folder for name, folder in config["package-dir"].items()}
    found = set()
    for name, folder in folders.items():
        for init in folder.rglob("__init__.py"):
            relative = init.parent.relative_to(folder).parts
            found.add(".".join((name, *relative)))
    assert found - set(config["packages"]) == set()
    assert set(config["packages"]) - found == set()
