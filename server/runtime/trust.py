"""Which plans may run host code: those that embed their lean runtime (a `LEAN` entry) or a
plugin library (a `PLGN` entry).

Such a plan is a program, not data: TensorRT runs the embedded library when
`engine_host_code_allowed` is set. A plan is trusted when its sha256 is on the allowlist or it
comes with an ed25519 signature (`<plan>.sig`: 64 raw bytes or their base64) by a configured
key. `cryptography` is imported only when a key or signature is used.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

SIGNATURE_SUFFIX = ".sig"
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class TrustConfigError(ValueError):
    """An allowlist entry, public key or signature cannot be read."""


@dataclass(frozen=True)
class TrustDecision:
    """Whether a plan may run its host code, and why."""

    trusted: bool
    sha256: str
    # "allowlist", "signature by key <id>", or for a refusal what to do about it.
    reason: str


@dataclass(frozen=True)
class PublicKey:
    """A configured ed25519 key; `key_id` is the first 16 hex digits of sha256(raw key)."""

    key_id: str
    raw: bytes


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def normalize_digest(text: str) -> str:
    """A lowercase sha256 hex digest; TrustConfigError for anything else."""
    digest = text.strip().lower()
    if digest.startswith("sha256:"):
        digest = digest[len("sha256:") :]
    if not _SHA256_HEX.match(digest):
        raise TrustConfigError(f"sha256 allowlist entry {text!r}: expected 64 hex digits")
    return digest


def read_allowlist(path: str | os.PathLike[str]) -> set[str]:
    """Digests from a file: one per line, `#` comments, `sha256sum` output accepted."""
    digests = set()
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            digests.add(normalize_digest(text.split()[0]))
        except TrustConfigError as e:
            raise TrustConfigError(f"{path}:{number}: {e}") from None
    return digests


def load_public_key(data: bytes) -> PublicKey:
    """An ed25519 public key from PEM, base64 of the 32 raw bytes, or the raw bytes."""
    # Raw key bytes may start or end with whitespace bytes: only text forms are stripped.
    raw = data if len(data) == 32 else _raw_public_key(data.strip())
    return PublicKey(hashlib.sha256(raw).hexdigest()[:16], raw)


def load_public_key_file(path: str | os.PathLike[str]) -> PublicKey:
    try:
        return load_public_key(Path(path).read_bytes())
    except TrustConfigError as e:
        raise TrustConfigError(f"{path}: {e}") from None


def decode_signature(data: bytes) -> bytes:
    """The 64 signature bytes from raw bytes or their base64 text."""
    if len(data) == 64:
        return data
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 64:
        raise TrustConfigError(
            f"ed25519 signature: expected 64 bytes or their base64, received {len(data)} bytes"
        )
    return raw


def signature_path(plan: Path) -> Path:
    return plan.with_name(plan.name + SIGNATURE_SUFFIX)


def read_signature_file(plan: Path) -> bytes | None:
    """The contents of `<plan>.sig`, or None when there is none."""
    try:
        return signature_path(plan).read_bytes()
    except FileNotFoundError:
        return None


class TrustPolicy:
    """The configured allowlist and signing keys; empty trusts nothing."""

    def __init__(
        self, allowed_sha256: Iterable[str] = (), public_keys: Iterable[PublicKey] = ()
    ) -> None:
        self.allowed_sha256 = frozenset(normalize_digest(d) for d in allowed_sha256)
        self.public_keys = tuple(public_keys)

    @classmethod
    def from_files(
        cls,
        allowlist_files: Iterable[str | os.PathLike[str]] = (),
        public_key_files: Iterable[str | os.PathLike[str]] = (),
        allowed_sha256: Iterable[str] = (),
    ) -> TrustPolicy:
        digests = set(allowed_sha256)
        for path in allowlist_files:
            digests |= read_allowlist(path)
        return cls(digests, [load_public_key_file(p) for p in public_key_files])

    def check(self, plan_bytes: bytes, signature: bytes | None) -> TrustDecision:
        """Whether `plan_bytes` (with its detached signature, if any) may run host code."""
        digest = sha256_hex(plan_bytes)
        if digest in self.allowed_sha256:
            return TrustDecision(True, digest, "its sha256 is on the allowlist")
        signed_by = self._verified_key(plan_bytes, signature) if signature is not None else None
        if signed_by is not None:
            return TrustDecision(True, digest, f"signed by ed25519 key {signed_by.key_id}")
        return TrustDecision(False, digest, self._refusal(digest, signature))

    def _verified_key(self, plan_bytes: bytes, signature: bytes) -> PublicKey | None:
        try:
            raw_signature = decode_signature(signature)
        except TrustConfigError:
            return None
        from cryptography.exceptions import InvalidSignature

        for key in self.public_keys:
            try:
                _ed25519(key.raw).verify(raw_signature, plan_bytes)
            except InvalidSignature:
                continue
            return key
        return None

    def _refusal(self, digest: str, signature: bytes | None) -> str:
        if signature is None:
            why = "its sha256 is not on the allowlist and it has no signature"
        elif not self.public_keys:
            why = "its sha256 is not on the allowlist and no signing key is configured"
        else:
            why = (
                "its sha256 is not on the allowlist and its signature does not verify "
                f"against any of the {len(self.public_keys)} configured ed25519 key(s)"
            )
        return (
            "the plan carries host code (an embedded lean runtime or plugin library, code that "
            "would run in the server) and is "
            f"not trusted: {why}. To trust it, add its sha256 {digest} to the allowlist, or "
            f"sign it with a configured ed25519 key and put the signature beside it as "
            f"<plan>{SIGNATURE_SUFFIX}"
        )


def _ed25519(raw: bytes) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(raw)


def _raw_public_key(data: bytes) -> bytes:
    if data.startswith(b"-----BEGIN"):
        return _raw_from_pem(data)
    if len(data) == 32:
        return data
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise TrustConfigError(
            "ed25519 public key: expected PEM, 32 raw bytes or their base64, "
            f"received {len(data)} bytes"
        )
    return raw


def _raw_from_pem(data: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_pem_public_key,
    )

    try:
        key = load_pem_public_key(data)
    except ValueError as e:
        raise TrustConfigError(f"ed25519 public key: unreadable PEM: {e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise TrustConfigError(
            f"public key: expected an ed25519 key, received {type(key).__name__}"
        )
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)
