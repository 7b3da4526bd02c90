"""Where a plan can run, told from the plan itself before TensorRT tries it.

TensorRT's only words for a plan it cannot load are "Engine deserialization failed". The plan's
header and engine section (plan_header, plan_engine) answer most of the why beforehand: a plan
from before 8.6 is not version-compatible; one built without hardware compatibility runs only
on the compute capability it was built on; one that runs a plugin it does not carry cannot load
here. Those are refused before TensorRT with what to do. When TensorRT fails anyway, the
message lists the likely causes in the order the plan's facts make them likely.

Whether a plan of 8.6 or later is version-compatible is not recorded anywhere this code can
read (plan_engine says how that was looked for); only a plan that embeds its lean runtime is
known to be, since TensorRT embeds one only in version-compatible plans.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trtserve.server.runtime.cuda_device import DeviceDescription
from trtserve.server.runtime.plan_engine import (
    BuildDevice,
    HardwareLevel,
    PluginUse,
    plugins_in,
    read_engine_facts,
)
from trtserve.server.runtime.plan_header import LegacyEngineError, PlanHeader, TrtVersion

AMPERE = (8, 0)

_VC_EMBEDDED = (
    "it embeds its lean runtime (a LEAN entry), which TensorRT does only for "
    "version-compatible plans"
)
_VC_UNKNOWN = (
    "the plan records it nowhere this reader can find (version-compatible plans and "
    "plans that are not, of the same TensorRT versions, differ in no field found); a lean "
    "runtime refuses a plan that is not, with 'Engine deserialization failed'"
)
_VC_LEGACY = "built before TensorRT 8.6, which introduced version-compatible plans"
_HW_FIELD = "read from the engine record's hardware compatibility field"
_HW_LEGACY = "built before TensorRT 8.6, which introduced hardware compatibility"


@dataclass(frozen=True)
class PlanCompatibility:
    """What the plan says about where it runs; None where it cannot be known (see reasons)."""

    version: TrtVersion | None
    version_compatible: bool | None
    version_compatible_reason: str
    hardware: HardwareLevel | None
    hardware_reason: str
    built_on: BuildDevice | None
    # Plugins that layers of the engine run, and whether the plan carries a plugin library.
    plugins: tuple[PluginUse, ...] = ()
    carries_plugins: bool = False

    def refusal(self) -> str | None:
        """Why no runtime here can load the plan, whatever the GPU; None when one may."""
        if self.version_compatible is False:
            return (
                f"the plan is not version-compatible ({self.version_compatible_reason}), so no "
                "lean runtime can load it: rebuild it with TensorRT 8.6 or later with "
                "VERSION_COMPATIBLE, or serve it with the full TensorRT it was built with"
            )
        if self.plugins and not self.carries_plugins:
            names = ", ".join(p.describe() for p in self.plugins)
            return (
                f"the plan runs the TensorRT plugin(s) {names}, which it does not carry (no "
                "PLGN entry), and this server loads no plugin libraries: rebuild it with the "
                "plugin library serialized into the plan (IBuilderConfig.plugins_to_serialize, "
                "with VERSION_COMPATIBLE), or serve it with a TensorRT that has the plugin"
            )
        return None

    def refusal_on(self, device: DeviceDescription) -> str | None:
        """Why the plan cannot run on `device`, from its hardware compatibility; None if it may."""
        capability = device.compute_capability
        if self.hardware is HardwareLevel.AMPERE_PLUS:
            if capability >= AMPERE:
                return None
            return (
                "the plan was built with hardware compatibility AMPERE_PLUS, which runs on "
                f"compute capability 8.0 and later, and {device.describe()} is older: serve it "
                "on an Ampere or newer GPU"
            )
        if self.hardware is None or self.built_on is None:
            return None
        built = self.built_on.compute_capability
        if built == capability:
            return None
        how = (
            "without hardware compatibility"
            if self.hardware is HardwareLevel.NONE
            else "with hardware compatibility SAME_COMPUTE_CAPABILITY"
        )
        return (
            f"the plan was built on a GPU of compute capability {_cc(built)} {how}, so TensorRT "
            f"runs it only on compute capability {_cc(built)}, and {device.describe()} is not: "
            "rebuild it on this kind of GPU, or with hardware compatibility AMPERE_PLUS (and "
            "VERSION_COMPATIBLE) to run it on any GPU from Ampere on"
        )

    def runs_on(self) -> str | None:
        """The GPUs the plan's hardware compatibility allows, in words; None when unknown."""
        if self.hardware is HardwareLevel.AMPERE_PLUS:
            return "compute capability 8.0 and later (Ampere and newer)"
        if self.hardware is None or self.built_on is None:
            return None
        return f"compute capability {_cc(self.built_on.compute_capability)} only"

    def likely_causes(self, device: DeviceDescription | None) -> list[str]:
        """Why TensorRT may have refused the plan, most likely first, from what the plan says."""
        causes = []
        if self.version_compatible is None:
            built = f"the full TensorRT {self.version}" if self.version else "the full TensorRT"
            causes.append(
                "the plan is not version-compatible: a lean runtime loads only plans built with "
                "VERSION_COMPATIBLE, and this plan cannot tell whether it was (rebuild it with "
                f"VERSION_COMPATIBLE, or serve it with {built} it was built with)"
            )
        if self.hardware is not HardwareLevel.AMPERE_PLUS and (
            self.built_on is None or device is None
        ):
            causes.append(
                "it was built for another GPU without hardware compatibility (its build GPU "
                "cannot be read from the plan)"
            )
        if self.carries_plugins:
            causes.append("the plugin library it carries (PLGN entry) did not load")
        causes.append(
            "the plan is damaged: a changed byte inside the engine section is not seen before "
            "TensorRT reads it"
        )
        return causes

    def to_dict(self) -> dict[str, Any]:
        """The JSON form `trtserve inspect --json` prints."""
        built_on = None
        if self.built_on is not None:
            built_on = {
                "compute_capability": _cc(self.built_on.compute_capability),
                "sm_count": self.built_on.sm_count,
                "memory_bytes": self.built_on.memory_bytes,
            }
        return {
            "version_compatible": self.version_compatible,
            "version_compatible_reason": self.version_compatible_reason,
            "hardware_compatibility": self.hardware.value if self.hardware else None,
            "hardware_compatibility_reason": self.hardware_reason,
            "built_on": built_on,
            "runs_on": self.runs_on(),
            "plugins_needed": [{"name": p.name, "version": p.version} for p in self.plugins],
            "plugin_library_embedded": self.carries_plugins,
            "refused": self.refusal(),
        }


def assess(header: PlanHeader, engine_section: bytes | memoryview) -> PlanCompatibility:
    """The compatibility of a plan from its header and the bytes of its ENGN entry."""
    v = header.version
    facts = read_engine_facts(engine_section, (v.major, v.minor, v.patch, v.build))
    return PlanCompatibility(
        version=v,
        version_compatible=True if header.has_lean_runtime else None,
        version_compatible_reason=_VC_EMBEDDED if header.has_lean_runtime else _VC_UNKNOWN,
        hardware=facts.hardware_level,
        hardware_reason=_HW_FIELD if facts.hardware_level else facts.unknown_reason,
        built_on=facts.built_on,
        plugins=facts.plugins,
        carries_plugins=header.has_plugins,
    )


def assess_legacy(error: LegacyEngineError, engine: bytes | memoryview) -> PlanCompatibility:
    """The compatibility of a bare engine without the plan container (see LegacyEngineError)."""
    plugins = plugins_in(engine)
    if not error.before_version_compatibility:
        reason = "the engine is cut out of its plan container"
        return PlanCompatibility(error.version, None, reason, None, reason, None, plugins)
    return PlanCompatibility(
        error.version, False, _VC_LEGACY, HardwareLevel.NONE, _HW_LEGACY, None, plugins
    )


def explain_failure(
    compatibility: PlanCompatibility,
    tried: str,
    device: DeviceDescription | None,
    tensorrt_said: str,
) -> str:
    """The message for a plan TensorRT refused: what was tried, likely causes, TensorRT's words."""
    causes = compatibility.likely_causes(device)
    numbered = "; ".join(f"({i}) {cause}" for i, cause in enumerate(causes, start=1))
    return (
        f"TensorRT could not load the plan. Tried: {tried}. Likely causes, most likely first: "
        f"{numbered}. TensorRT said: {tensorrt_said or 'nothing'}"
    )


def _cc(capability: tuple[int, int]) -> str:
    return f"{capability[0]}.{capability[1]}"
