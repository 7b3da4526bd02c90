"""`trtserve serve --repository` refuses a path that is not a folder, naming it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def serve(repository: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "trtserve.cli.main", "serve", "--repository", str(repository)]
    return subprocess.run(
        [*command, "--grpc-port", "0", "--metrics-port", "-1"],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("make", "found"),
    [(lambda p: None, "nothing (no such folder)"), (lambda p: p.write_text("x"), "a file")],
    ids=["missing", "a file"],
)
def test_a_repository_that_is_not_a_folder_stops_the_start(
    tmp_path: Path, make: object, found: str
) -> None:
    path = tmp_path / "models"
    make(path)  # type: ignore[operator]
    done = serve(path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert (
        f"setting repository: expected an existing model repository folder, received {path}, "
        f"which is {found}" in done.stdout
    ), done.stdout
    assert "serving gRPC" not in done.stdout
