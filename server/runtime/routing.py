"""Which TensorRT runtime loads a plan, decided from its header before TensorRT sees it.

A plan without a `LEAN` entry deserializes only through the lean runtime of exactly its build
version; anything else gives TensorRT's opaque "Engine deserialization failed", so a missing
version is reported here, by name, with the command that installs it. A plan with a `LEAN`
entry is deserialized by the dispatch runtime running the plan's own host code, which is
allowed only for trusted plans. So is a plan with a `PLGN` entry (a plugin library TensorRT
loads from the plan), deserialized by the lean runtime of its version with host code allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from trtserve.server.errors import FailedPrecondition, Unavailable
from trtserve.server.runtime.lean_store import LeanStore, install_command
from trtserve.server.runtime.plan_header import PlanHeader, TrtVersion
from trtserve.server.runtime.trust import TrustDecision


class RouteKind(StrEnum):
    """The runtime that deserializes a plan."""

    # The installed lean runtime of exactly the plan's version, loaded by the dispatch runtime.
    LEAN = "lean"
    # The dispatch runtime itself, running the lean runtime embedded in the plan.
    EMBEDDED_LEAN = "embedded-lean"


@dataclass(frozen=True)
class Route:
    """How one plan is loaded."""

    kind: RouteKind
    version: TrtVersion
    # The lean library to load (LEAN routes only).
    library: Path | None = None
    # Why the plan may run host code (EMBEDDED_LEAN routes and plans that carry plugins).
    trust: TrustDecision | None = None

    @property
    def host_code(self) -> bool:
        """True when TensorRT must be allowed to run code the plan carries."""
        return self.trust is not None

    def describe(self) -> str:
        if self.kind is RouteKind.LEAN:
            return f"lean runtime {self.version} from {self.library}"
        return f"dispatch runtime with the plan's embedded lean runtime {self.version}"


@dataclass(frozen=True)
class RoutePreview:
    """What `trtserve inspect` says about a plan's runtime, without failing."""

    kind: RouteKind
    version: TrtVersion
    runtime: str
    installed: bool
    # The library that will be loaded, when installed.
    library: Path | None
    hint: str


def route_plan(header: PlanHeader, store: LeanStore, trust: TrustDecision | None) -> Route:
    """The runtime that loads the plan; raises when that runtime cannot be used.

    `trust` is the trust policy's decision on the plan; it matters only for plans that embed a
    lean runtime, and None there means it was not asked, which refuses the plan.

    Raises Unavailable when the lean runtime of the plan's version is not installed, and
    FailedPrecondition when a plan with host code is not trusted.
    """
    if header.has_lean_runtime:
        return Route(RouteKind.EMBEDDED_LEAN, header.version, trust=_trusted(trust, "lean runtime"))
    library = store.path_for(header.version)
    if library is None:
        raise Unavailable(
            f"the plan was built with TensorRT {header.version} and needs the lean runtime of "
            f"exactly that version, which is not installed in {store.root}; install it with "
            f"`{install_command(header.version)}`"
        )
    if header.has_plugins:
        return Route(RouteKind.LEAN, header.version, library, _trusted(trust, "plugin library"))
    return Route(RouteKind.LEAN, header.version, library=library)


def preview_route(header: PlanHeader, store: LeanStore) -> RoutePreview:
    """Which runtime will load the plan and whether it is present here."""
    if header.has_lean_runtime:
        return RoutePreview(
            RouteKind.EMBEDDED_LEAN,
            header.version,
            f"dispatch runtime, running the plan's embedded lean runtime {header.version}",
            installed=True,
            library=None,
            hint="the plan carries host code: it loads only when trusted "
            "(sha256 on the allowlist, or an ed25519 signature by a configured key)",
        )
    library = store.path_for(header.version)
    if library is None:
        hint = f"run `{install_command(header.version)}` (runtimes folder {store.root})"
    else:
        hint = f"installed at {library}"
    if header.has_plugins:
        hint += "; the plan carries a plugin library (host code): it loads only when trusted"
    return RoutePreview(
        RouteKind.LEAN,
        header.version,
        f"lean runtime {header.version} (exactly the plan's build version)",
        installed=library is not None,
        library=library,
        hint=hint,
    )


def _trusted(trust: TrustDecision | None, what: str) -> TrustDecision:
    if trust is None:
        raise FailedPrecondition(
            f"the plan embeds a {what} (host code) and no trust decision was made for it; "
            "it is refused"
        )
    if not trust.trusted:
        raise FailedPrecondition(trust.reason)
    return trust
