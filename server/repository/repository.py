"""The model repository on disk, in Triton's layout.

``<root>/<model>/config.pbtxt`` (or ``config.json``) and ``<root>/<model>/<version>/<file>``.
Every write lands atomically: a temporary file in the target folder, fsync, rename over the
final name, fsync of the folder; a failed write leaves neither the file nor a temporary behind.
Nothing here deletes model files: unloading a model leaves its folder as it is.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, Literal

from trtserve.protocol import model_config_pb2
from trtserve.server.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from trtserve.server.repository.model_config import (
    DEFAULT_FILENAMES,
    FILE_NAME,
    is_plain_name,
    parse_config_text,
    settings_from_config,
)
from trtserve.server.repository.write_guards import check_no_links, space_errors
from trtserve.server.specs import ModelSettings

CONFIG_FILES: dict[str, Literal["pbtxt", "json"]] = {
    # config.json is what API loads write, so it wins when both exist.
    "config.json": "json",
    "config.pbtxt": "pbtxt",
}
_VERSION = re.compile(r"[1-9][0-9]{0,17}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_MAX_RELATIVE_PATH = 160
TEMP_PREFIX = ".tmp-"


def check_model_name(name: str) -> str:
    """Return `name` if it is a valid model name, else raise InvalidArgument."""
    if not is_plain_name(name):
        shown = name if len(name) <= 64 else name[:64] + "..."
        raise InvalidArgument(
            f"model name: expected 1 to 128 characters from [A-Za-z0-9_.-], not starting "
            f"with '.', received {shown!r} ({len(name)} characters)"
        )
    return name


def check_relative_path(relative_path: str) -> tuple[int, str]:
    """Split a `<version>/<file>` path into its version and file name, or raise InvalidArgument."""
    parts = relative_path.split("/")
    ok = (
        len(relative_path) <= _MAX_RELATIVE_PATH
        and len(parts) == 2
        and _VERSION.fullmatch(parts[0]) is not None
        and is_plain_name(parts[1])
    )
    if not ok:
        shown = relative_path if len(relative_path) <= 64 else relative_path[:64] + "..."
        raise InvalidArgument(
            f"file path: expected '<version>/<file name>' with a positive integer version and a "
            f"plain file name ({FILE_NAME.pattern}), at most {_MAX_RELATIVE_PATH} characters, "
            f"received {shown!r}"
        )
    return int(parts[0]), parts[1]


class ModelRepository:
    """One folder of models; reads their settings and writes their files atomically."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def check_folder(self) -> None:
        """ValueError naming the setting unless the root is an existing folder.

        A mistyped path would otherwise start a server that serves nothing and looks healthy.
        """
        if self.root.is_dir():
            return
        found = "a file" if self.root.exists() else "nothing (no such folder)"
        raise ValueError(
            f"setting repository: expected an existing model repository folder, received "
            f"{self.root}, which is {found}"
        )

    def model_names(self) -> list[str]:
        """Names of the folders that hold a config file or a version folder, sorted."""
        if not self.root.is_dir():
            return []
        names = []
        for entry in self.root.iterdir():
            if entry.is_dir() and is_plain_name(entry.name) and self._looks_like_model(entry):
                names.append(entry.name)
        return sorted(names)

    def _looks_like_model(self, folder: Path) -> bool:
        if any((folder / config).is_file() for config in CONFIG_FILES):
            return True
        return bool(self._version_folders(folder))

    @staticmethod
    def _version_folders(folder: Path) -> list[int]:
        return sorted(
            int(entry.name)
            for entry in folder.iterdir()
            if entry.is_dir() and _VERSION.fullmatch(entry.name)
        )

    def model_dir(self, name: str) -> Path:
        """The folder of model `name` (which may not exist yet)."""
        return self.root / check_model_name(name)

    def _existing_dir(self, name: str) -> Path:
        folder = self.model_dir(name)
        if not folder.is_dir():
            raise NotFound(f"model '{name}': expected a folder {folder}, received none")
        return folder

    def versions(self, name: str) -> list[int]:
        """The model's version numbers, ascending."""
        return self._version_folders(self._existing_dir(name))

    def read_settings(self, name: str) -> ModelSettings:
        """Parse the model's config; without one, minimal settings guessed from its files."""
        folder = self._existing_dir(name)
        guessed = self._guess_platform(folder)
        for filename, fmt in CONFIG_FILES.items():
            path = folder / filename
            if path.is_file():
                try:
                    text = path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as e:
                    raise FailedPrecondition(
                        f"model '{name}': expected a readable UTF-8 {path}, received error: {e}"
                    ) from None
                cfg = parse_config_text(text, fmt, name)
                return settings_from_config(cfg, name, default_platform=guessed)
        if not guessed:
            raise FailedPrecondition(
                f"model '{name}': expected {' or '.join(CONFIG_FILES)} or a version folder "
                f"holding {' or '.join(sorted(DEFAULT_FILENAMES.values()))} in {folder}, "
                f"received neither"
            )
        return settings_from_config(model_config_pb2.ModelConfig(), name, guessed)

    def _guess_platform(self, folder: Path) -> str:
        # The newest version decides, the way a user who just added one would expect.
        for version in reversed(self._version_folders(folder)):
            for platform, filename in sorted(DEFAULT_FILENAMES.items()):
                if (folder / str(version) / filename).is_file():
                    return platform
        return ""

    def model_path(self, name: str, version: int, settings: ModelSettings) -> Path:
        """The model file of one version: the config's default_model_filename or the
        platform's default name."""
        if version < 1:
            raise InvalidArgument(
                f"model '{name}': version: expected a positive integer, received {version}"
            )
        filename = settings.default_model_filename or DEFAULT_FILENAMES.get(settings.platform)
        if not filename:
            raise InvalidArgument(
                f"model '{name}': platform: expected one of {', '.join(sorted(DEFAULT_FILENAMES))}"
                f", received '{settings.platform}'"
            )
        return self.model_dir(name) / str(version) / filename

    def write_config_json(self, name: str, text: str) -> Path:
        """Write the model's config.json atomically (it takes precedence over config.pbtxt)."""
        return self.write_config(name, text, "json")

    def write_config(self, name: str, text: str, fmt: Literal["pbtxt", "json"]) -> Path:
        """Write config.pbtxt or config.json atomically."""
        target = self.model_dir(name) / f"config.{fmt}"
        self._atomic_write(target, text.encode("utf-8"), f"model '{name}' config")
        return target

    def write_file(self, name: str, relative_path: str, data: bytes) -> Path:
        """Write `<version>/<file>` of a model atomically."""
        target = self.file_path(name, relative_path)
        self._atomic_write(target, data, f"model '{name}' file '{relative_path}'")
        return target

    def file_path(self, name: str, relative_path: str) -> Path:
        """Where `<version>/<file>` of a model lives (validated; it may not exist)."""
        version, filename = check_relative_path(relative_path)
        return self.model_dir(name) / str(version) / filename

    def _atomic_write(self, target: Path, data: bytes, what: str) -> None:
        self.check_writable(target)
        with space_errors(self.root, what):
            created = self.make_dirs(target.parent)
            try:
                _write_replace(target, data)
            except BaseException:
                # Folders made only for this write go too, so a failed write leaves no trace.
                remove_folders(created)
                raise

    def check_writable(self, target: Path) -> None:
        """Refuse a write to `target` (a model folder or a path below one) through a link."""
        relative = target.relative_to(self.root).parts
        model = relative[0]
        paths = [self.root.joinpath(*relative[:i]) for i in range(1, len(relative) + 1)]
        check_no_links(self.root, model, paths)

    def move_into_place(self, name: str, relative_path: str, staged: Path) -> Path:
        """Rename a fully written file of the model's folder to `<version>/<file>`."""
        target = self.file_path(name, relative_path)
        self.check_writable(target)
        with space_errors(self.root, f"model '{name}' file '{relative_path}'"):
            created = self.make_dirs(target.parent)
            try:
                os.replace(staged, target)
            except BaseException:
                remove_folders(created)
                raise
            fsync_dir(target.parent)
            fsync_dir(staged.parent)
        return target

    def make_dirs(self, folder: Path) -> list[Path]:
        """Create `folder` and missing parents; return those created, outermost first."""
        missing: list[Path] = []
        current = folder
        while not current.exists():
            missing.append(current)
            current = current.parent
        created: list[Path] = []
        try:
            for path in reversed(missing):
                try:
                    path.mkdir()
                except FileExistsError:
                    continue
                created.append(path)
                fsync_dir(path.parent)
        except BaseException:
            remove_folders(created)  # a full disk can refuse the second folder
            raise
        return created


def remove_folders(created: list[Path]) -> None:
    """Remove folders made for a write that failed, innermost first, if they are empty."""
    for folder in reversed(created):
        with contextlib.suppress(OSError):
            folder.rmdir()


def check_sha256(what: str, expected_sha256: str | None) -> None:
    """Refuse an expected digest that is not 64 hexadecimal digits."""
    if expected_sha256 is not None and not _SHA256.fullmatch(expected_sha256):
        raise InvalidArgument(
            f"{what}: sha256: expected 64 hexadecimal digits, received {expected_sha256!r}"
        )


def write_chunks(
    f: BinaryIO,
    chunks: Iterable[bytes],
    expected_sha256: str | None,
    max_bytes: int | None,
    what: str,
) -> tuple[int, str]:
    """Write and fsync `chunks`, checking size and digest; return the size and sha256."""
    sha = hashlib.sha256()
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            raise ResourceExhausted(f"{what}: expected at most {max_bytes} bytes, received more")
        sha.update(chunk)
        f.write(chunk)
    f.flush()
    os.fsync(f.fileno())
    digest = sha.hexdigest()
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise InvalidArgument(
            f"{what}: sha256: expected {expected_sha256.lower()}, received {digest}"
        )
    return size, digest


def _write_replace(target: Path, data: bytes) -> None:
    fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f"{TEMP_PREFIX}{target.name}.")
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp makes files private; model files are as readable as others written here.
            os.fchmod(f.fileno(), 0o644)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    fsync_dir(target.parent)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
