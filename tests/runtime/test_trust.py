"""Trust for plans that carry host code: sha256 allowlist and ed25519 signatures."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from trtserve.server.runtime.trust import (
    TrustConfigError,
    TrustPolicy,
    decode_signature,
    load_public_key,
    load_public_key_file,
    read_allowlist,
    read_signature_file,
    signature_path,
)

PLAN = b"ftrt" + bytes(range(256)) * 40
DIGEST = hashlib.sha256(PLAN).hexdigest()


@pytest.fixture(scope="module")
def private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def test_empty_policy_trusts_nothing_and_says_how_to_trust() -> None:
    decision = TrustPolicy().check(PLAN, None)
    assert not decision.trusted
    assert decision.sha256 == DIGEST
    assert "no signature" in decision.reason
    assert f"add its sha256 {DIGEST} to the allowlist" in decision.reason
    assert "sign it" in decision.reason


def test_allowlisted_digest_is_trusted() -> None:
    decision = TrustPolicy([DIGEST.upper()]).check(PLAN, None)
    assert decision.trusted
    assert "allowlist" in decision.reason


def test_allowlist_of_another_plan_refuses() -> None:
    other = hashlib.sha256(b"another plan").hexdigest()
    assert not TrustPolicy([other]).check(PLAN, None).trusted


def test_read_allowlist_file(tmp_path: Path) -> None:
    path = tmp_path / "allow.txt"
    path.write_text(f"# trusted plans\n{DIGEST}  model.plan\n\nsha256:{'ab' * 32}  # other\n")
    assert read_allowlist(path) == {DIGEST, "ab" * 32}
    policy = TrustPolicy.from_files(allowlist_files=[path])
    assert policy.check(PLAN, None).trusted


def test_bad_allowlist_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "allow.txt"
    path.write_text(f"{DIGEST}\nnot-a-digest\n")
    with pytest.raises(TrustConfigError, match=r"allow\.txt:2: .*expected 64 hex digits"):
        read_allowlist(path)


@pytest.mark.parametrize("key_form", ["pem", "raw", "base64"])
@pytest.mark.parametrize("signature_form", ["raw", "base64"])
def test_signature_by_configured_key_is_trusted(
    private_key: Ed25519PrivateKey, key_form: str, signature_form: str
) -> None:
    public = private_key.public_key()
    key_bytes = {
        "pem": public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
        "raw": raw_public(private_key),
        "base64": base64.b64encode(raw_public(private_key)) + b"\n",
    }[key_form]
    signature = private_key.sign(PLAN)
    if signature_form == "base64":
        signature = base64.b64encode(signature) + b"\n"
    key = load_public_key(key_bytes)
    decision = TrustPolicy(public_keys=[key]).check(PLAN, signature)
    assert decision.trusted
    assert key.key_id in decision.reason
    assert key.key_id == hashlib.sha256(raw_public(private_key)).hexdigest()[:16]


def test_signature_by_unknown_key_is_refused(private_key: Ed25519PrivateKey) -> None:
    other = load_public_key(raw_public(Ed25519PrivateKey.generate()))
    decision = TrustPolicy(public_keys=[other]).check(PLAN, private_key.sign(PLAN))
    assert not decision.trusted
    assert "does not verify against any of the 1 configured ed25519 key(s)" in decision.reason
    assert DIGEST in decision.reason


def test_signature_of_another_plan_is_refused(private_key: Ed25519PrivateKey) -> None:
    key = load_public_key(raw_public(private_key))
    tampered = PLAN[:-1] + b"\0"
    assert not TrustPolicy(public_keys=[key]).check(tampered, private_key.sign(PLAN)).trusted


def test_signature_without_configured_keys_is_refused(private_key: Ed25519PrivateKey) -> None:
    decision = TrustPolicy().check(PLAN, private_key.sign(PLAN))
    assert not decision.trusted
    assert "no signing key is configured" in decision.reason


def test_garbage_signature_is_refused_not_raised(private_key: Ed25519PrivateKey) -> None:
    key = load_public_key(raw_public(private_key))
    assert not TrustPolicy(public_keys=[key]).check(PLAN, b"garbage").trusted


def test_decode_signature_rejects_wrong_length() -> None:
    with pytest.raises(TrustConfigError, match="expected 64 bytes"):
        decode_signature(b"short")
    assert decode_signature(base64.b64encode(bytes(64))) == bytes(64)


def test_non_ed25519_keys_are_refused(tmp_path: Path) -> None:
    rsa = generate_private_key(public_exponent=65537, key_size=2048).public_key()
    path = tmp_path / "rsa.pem"
    path.write_bytes(rsa.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(TrustConfigError, match=r"rsa\.pem: .*expected an ed25519 key"):
        load_public_key_file(path)
    with pytest.raises(TrustConfigError, match="expected PEM, 32 raw bytes or their base64"):
        load_public_key(b"not a key")


def test_signature_file_beside_the_plan(tmp_path: Path, private_key: Ed25519PrivateKey) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(PLAN)
    assert read_signature_file(plan) is None
    signature_path(plan).write_bytes(private_key.sign(PLAN))
    assert signature_path(plan).name == "model.plan.sig"
    key_file = tmp_path / "key.pub"
    key_file.write_bytes(base64.b64encode(raw_public(private_key)))
    policy = TrustPolicy.from_files(public_key_files=[key_file])
    assert policy.check(plan.read_bytes(), read_signature_file(plan)).trusted
