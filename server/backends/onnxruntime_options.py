"""ONNX Runtime session options from a model's `parameters`, under the names Triton's ONNX
Runtime backend reads, so a config moved over from Triton means what it meant there.

    parameters { key: "intra_op_thread_count" value: { string_value: "4" } }

Recognised: `intra_op_thread_count` (also trtserve's earlier `intra_op_threads`),
`inter_op_thread_count`, `execution_mode` (0 sequential, 1 parallel), `enable_mem_arena` and
`enable_mem_pattern` (0 or 1). A bad value is refused naming the parameter; other parameters
have no meaning to this backend and are left alone, as Triton leaves them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from trtserve.server.errors import InvalidArgument

INTRA_OP = "intra_op_thread_count"
# trtserve's name for it before it read Triton's.
INTRA_OP_ALIAS = "intra_op_threads"
INTER_OP = "inter_op_thread_count"
EXECUTION_MODE = "execution_mode"
MEMORY_ARENA = "enable_mem_arena"
MEMORY_PATTERN = "enable_mem_pattern"


@dataclass(frozen=True)
class SessionSettings:
    """What a model's parameters ask of its ONNX Runtime sessions (None: the default)."""

    # One thread per instance by default, so N instances use N cores without contending.
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    parallel: bool = False
    memory_arena: bool | None = None
    memory_pattern: bool | None = None


def session_settings(model: str, parameters: Mapping[str, str]) -> SessionSettings:
    """The session settings of a model's parameters; InvalidArgument naming a bad one."""
    intra = _threads(model, parameters, INTRA_OP)
    alias = _threads(model, parameters, INTRA_OP_ALIAS)
    if intra is not None and alias is not None and intra != alias:
        raise InvalidArgument(
            f"model '{model}': parameters '{INTRA_OP}' and '{INTRA_OP_ALIAS}' name the same "
            f"setting: expected equal values, received {intra} and {alias}"
        )
    mode = _choice(model, parameters, EXECUTION_MODE, {"0": False, "1": True})
    return SessionSettings(
        intra_op_threads=intra or alias or 1,
        inter_op_threads=_threads(model, parameters, INTER_OP) or 1,
        parallel=bool(mode),
        memory_arena=_choice(model, parameters, MEMORY_ARENA, _SWITCH),
        memory_pattern=_choice(model, parameters, MEMORY_PATTERN, _SWITCH),
    )


_SWITCH = {"0": False, "1": True}


def _threads(model: str, parameters: Mapping[str, str], key: str) -> int | None:
    raw = parameters.get(key)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise InvalidArgument(
            f"model '{model}': parameter '{key}': expected a positive integer, received {raw!r}"
        )
    return value


def _choice(
    model: str, parameters: Mapping[str, str], key: str, choices: Mapping[str, bool]
) -> bool | None:
    raw = parameters.get(key)
    if raw is None:
        return None
    if raw.strip() not in choices:
        raise InvalidArgument(
            f"model '{model}': parameter '{key}': expected one of {', '.join(choices)}, "
            f"received {raw!r}"
        )
    return choices[raw.strip()]
