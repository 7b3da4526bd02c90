"""Warmup: a version's samples run on every instance before it serves (Triton's model_warmup).

A model's first executions pay for what its runtime does lazily (kernels loaded, memory
allocated, on a GPU the CUDA context's first work); samples run at load keep that off the first
clients. Data is zeros, seeded random values, or a file of raw tensor bytes in the model's
`warmup/` folder, as in Triton. A sample that fails fails the load, naming it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trtserve.protocol import datatypes, tensors
from trtserve.server.backends.base import ModelInstance
from trtserve.server.errors import FailedPrecondition, ServerError
from trtserve.server.specs import WarmupInput, WarmupSample

log = logging.getLogger(__name__)

WARMUP_FOLDER = "warmup"
# Random data is seeded: a warmup that fails fails the same way every time.
_SEED = 0


def run_warmup(
    where: str,
    samples: Sequence[WarmupSample],
    instances: Sequence[ModelInstance],
    model_folder: Path,
    outputs: Sequence[str],
) -> None:
    """Run every sample `count` times on every instance; FailedPrecondition on a failure.

    `where` names the model and version in messages.
    """
    for sample in samples:
        arrays = sample_arrays(where, sample, model_folder)
        for index, instance in enumerate(instances):
            for _ in range(sample.count):
                try:
                    instance.execute(arrays, outputs)
                except ServerError as e:
                    raise FailedPrecondition(
                        f"{where}: model_warmup '{sample.name}' failed on instance {index}: {e}"
                    ) from None
        log.info(
            "warmup %s ran %d time(s) on %d instance(s) of %s",
            sample.name,
            sample.count,
            len(instances),
            where,
        )


def sample_arrays(where: str, sample: WarmupSample, model_folder: Path) -> dict[str, np.ndarray]:
    """The input arrays of one sample, with the batch dimension when the model batches."""
    arrays = {}
    for name, item in sample.inputs:
        one = _one(where, sample.name, name, item, model_folder)
        if sample.batch_size:
            one = np.repeat(one[np.newaxis, ...], sample.batch_size, axis=0)
        arrays[name] = one
    return arrays


def _one(where: str, sample: str, name: str, item: WarmupInput, model_folder: Path) -> np.ndarray:
    """One batch element of an input."""
    datatype = datatypes.from_name(item.datatype)
    count = math.prod(item.shape)
    if item.source == "file":
        path = model_folder / WARMUP_FOLDER / item.file
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise FailedPrecondition(
                f"{where}: model_warmup '{sample}' input '{name}': cannot read {path}: "
                f"{e.strerror or e}"
            ) from None
        try:
            return tensors.from_raw(name, item.datatype, item.shape, raw)
        except tensors.TensorDataError as e:
            raise FailedPrecondition(
                f"{where}: model_warmup '{sample}' input_data_file {item.file}: {e}"
            ) from None
    if datatype.name == "BYTES":
        element = b"" if item.source == "zero" else b"warmup"
        return np.full(item.shape, element, dtype=np.object_)
    if item.source == "zero":
        return np.zeros(item.shape, datatype.dtype)
    random = np.random.default_rng(_SEED)
    if datatype.dtype.kind == "f":
        return random.random(count).astype(datatype.dtype).reshape(item.shape)
    if datatype.dtype.kind == "b":
        return random.integers(0, 2, count).astype(bool).reshape(item.shape)
    return random.integers(0, 100, count).astype(datatype.dtype).reshape(item.shape)
