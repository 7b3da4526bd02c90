"""The states a model goes through, as RepositoryIndex and trtserve_model_state report them."""

from __future__ import annotations

from enum import StrEnum


class ModelState(StrEnum):
    """A model's state; the value is the protocol's and the metric's label."""

    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    UNLOADING = "UNLOADING"
