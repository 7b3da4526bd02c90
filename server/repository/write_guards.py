"""What every repository write checks first and how its disk errors reach clients.

Writes never leave the repository: a model folder, version folder or file that is a symbolic
link (or resolves elsewhere) is refused, so a link planted in the repository cannot make the
server create, replace or delete files outside it. Reading and serving through links stays
allowed: Kubernetes ConfigMap and Secret mounts are symbolic links.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from trtserve.server.errors import FailedPrecondition, ResourceExhausted

# A full disk, a full quota, a file over the filesystem's or the process's size limit.
_SPACE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def check_no_links(root: Path, model: str, paths: list[Path]) -> None:
    """Refuse to write through `paths` (a model folder and what lies below it, outermost
    first) if one is a symbolic link or the model folder is not a direct child of `root`."""
    for path in paths:
        if path.is_symlink():
            raise FailedPrecondition(
                f"model '{model}': {path}: expected a real file or folder inside the "
                f"repository {root}, received a symbolic link to {os.readlink(path)}; the server "
                "writes only inside its repository (serving through the link stays allowed)"
            )
    folder = paths[0]
    if folder.exists() and folder.resolve().parent != root.resolve():
        raise FailedPrecondition(
            f"model '{model}': {folder}: expected a folder inside the repository {root}, "
            f"received one that resolves to {folder.resolve()}"
        )


@contextlib.contextmanager
def space_errors(root: Path, what: str) -> Iterator[None]:
    """Turn a full disk or quota during a write into ResourceExhausted naming the repository."""
    try:
        yield
    except OSError as error:
        if error.errno not in _SPACE_ERRORS:
            raise
        raise ResourceExhausted(
            f"{what}: expected room to write it in the repository {root}, received "
            f"{errno.errorcode.get(error.errno or 0, '?')} ({error.strerror}); nothing was kept, "
            "the model serves what it served before"
        ) from None
