"""RepositoryIndex says why a model of the repository is not serving."""

from __future__ import annotations

from pathlib import Path

from managed import index, with_loaded_repository

from trtserve.server.default_model import SIMPLE_CONFIG, build_simple_model


def test_a_model_whose_config_does_not_parse_shows_the_parse_error(tmp_path: Path) -> None:
    root = tmp_path / "repository"
    for name, config in (("good", SIMPLE_CONFIG), ("typo", "max_batch_size 8 {\n")):
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.onnx").write_bytes(build_simple_model())
        (root / name / "config.pbtxt").write_text(config.replace('"simple"', f'"{name}"'))
    entries = {e.name: (e.state, e.reason) for e in with_loaded_repository(root, index)}
    assert entries["good"] == ("READY", "")
    state, reason = entries["typo"]
    assert state == "UNAVAILABLE"
    assert "typo" in reason and "does not parse" in reason and "Expected" in reason, reason
