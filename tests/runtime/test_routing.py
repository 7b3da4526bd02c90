"""Routing a plan to its runtime, from its header, and the backend without a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from trtserve.server.backends.tensorrt_backend import TensorRTBackend
from trtserve.server.errors import FailedPrecondition, Unavailable
from trtserve.server.runtime.cuda_device import cuda_device_count
from trtserve.server.runtime.lean_store import LeanStore
from trtserve.server.runtime.plan_header import FOOTER, PlanEntry, PlanHeader, TrtVersion
from trtserve.server.runtime.routing import RouteKind, preview_route, route_plan
from trtserve.server.runtime.trust import TrustDecision
from trtserve.server.specs import ModelSettings

V11 = TrtVersion(11, 0, 0, 114)


def header(*tags: str, version: TrtVersion = V11) -> PlanHeader:
    entries = tuple(PlanEntry(tag, 80 + 100 * i, 100) for i, tag in enumerate(tags))
    return PlanHeader(0, 1000, version, 0x74727472, entries, FOOTER)


def install_fake(root: Path, version: str) -> Path:
    """A runtime folder as the store lays it out (contents do not matter to routing)."""
    folder = root / version
    folder.mkdir(parents=True)
    library = folder / f"libnvinfer_lean.so.{version.split('.')[0]}"
    library.write_bytes(b"\x7fELF")
    return library


def test_plan_goes_to_the_lean_runtime_of_its_exact_version(tmp_path: Path) -> None:
    library = install_fake(tmp_path, "11.0.0.114")
    install_fake(tmp_path, "11.4.0.106")
    route = route_plan(header("ENGN", "WGHT"), LeanStore(tmp_path), None)
    assert route.kind is RouteKind.LEAN
    assert route.version == V11
    assert route.library == library
    assert "11.0.0.114" in route.describe()


def test_missing_version_is_unavailable_with_the_install_command(tmp_path: Path) -> None:
    install_fake(tmp_path, "11.4.0.106")  # a newer version does not load this plan
    with pytest.raises(Unavailable) as caught:
        route_plan(header("ENGN"), LeanStore(tmp_path), None)
    message = str(caught.value)
    assert "TensorRT 11.0.0.114" in message
    assert "`trtserve runtimes install 11.0.0.114`" in message
    assert str(tmp_path) in message


def test_embedded_lean_runtime_needs_trust(tmp_path: Path) -> None:
    store = LeanStore(tmp_path)
    refused = TrustDecision(False, "ab" * 32, "not trusted: add its sha256 abab... or sign it")
    with pytest.raises(FailedPrecondition, match="not trusted: add its sha256"):
        route_plan(header("ENGN", "LEAN"), store, refused)
    with pytest.raises(FailedPrecondition, match="no trust decision"):
        route_plan(header("ENGN", "LEAN"), store, None)
    trusted = TrustDecision(True, "ab" * 32, "its sha256 is on the allowlist")
    route = route_plan(header("ENGN", "LEAN"), store, trusted)
    assert route.kind is RouteKind.EMBEDDED_LEAN
    assert route.trust == trusted
    assert route.library is None


def test_preview(tmp_path: Path) -> None:
    store = LeanStore(tmp_path)
    missing = preview_route(header("ENGN"), store)
    assert not missing.installed
    assert "trtserve runtimes install 11.0.0.114" in missing.hint
    library = install_fake(tmp_path, "11.0.0.114")
    present = preview_route(header("ENGN"), store)
    assert present.installed and present.library == library
    embedded = preview_route(header("ENGN", "LEAN"), store)
    assert embedded.kind is RouteKind.EMBEDDED_LEAN
    assert "trusted" in embedded.hint


@pytest.mark.skipif(cuda_device_count() > 0, reason="a CUDA device is visible")
def test_backend_without_gpu_is_unavailable(tmp_path: Path) -> None:
    backend = TensorRTBackend(store=LeanStore(tmp_path))
    assert backend.platform == "tensorrt_plan"
    assert backend.default_filename == "model.plan"
    ok, why = backend.available()
    assert not ok
    assert "no CUDA device" in why
    # A damaged file is reported as such even here; an intact plan as needing a GPU.
    with pytest.raises(FailedPrecondition, match="model 'm': cannot read"):
        backend.load(tmp_path / "model.plan", ModelSettings(name="m", platform="tensorrt_plan"))
    real = Path(__file__).resolve().parents[2].parent / "shared" / "plans"
    plan = real / "conv_relu_trt11.0.0.114.plan"
    if plan.is_file():
        with pytest.raises(Unavailable, match="model 'm': no CUDA device"):
            backend.load(plan, ModelSettings(name="m", platform="tensorrt_plan"))


def test_a_plan_carrying_a_plugin_library_needs_trust(tmp_path: Path) -> None:
    library = install_fake(tmp_path, "11.0.0.114")
    store = LeanStore(tmp_path)
    refused = TrustDecision(False, "ab" * 32, "not trusted: add its sha256 abab... or sign it")
    with pytest.raises(FailedPrecondition, match="not trusted"):
        route_plan(header("ENGN", "PLGN"), store, refused)
    with pytest.raises(FailedPrecondition, match="embeds a plugin library"):
        route_plan(header("ENGN", "PLGN"), store, None)
    trusted = TrustDecision(True, "ab" * 32, "its sha256 is on the allowlist")
    route = route_plan(header("ENGN", "PLGN"), store, trusted)
    # Its own lean runtime loads it, with host code allowed for that one call.
    assert route.kind is RouteKind.LEAN and route.library == library
    assert route.host_code
    assert not route_plan(header("ENGN"), store, None).host_code
    assert "plugin library" in preview_route(header("ENGN", "PLGN"), store).hint
