"""Which fields of Triton's model configuration trtserve implements; every other one is refused.

A config is parsed with Triton's whole schema (proto/model_config.proto): a name that is no
field of it is a parse error (model_config names it, with the nearest field), and a Triton
field set to anything but its default that trtserve does not implement is refused here, by
its path. A config that loads does what it says.
"""

from __future__ import annotations

from google.protobuf.message import Message

# Dotted paths from ModelConfig; an element of a repeated field shares its field's path.
SUPPORTED = frozenset(
    {
        "name",
        "platform",
        "backend",
        "max_batch_size",
        "default_model_filename",
        "parameters",
        "version_policy",
        "version_policy.latest",
        "version_policy.latest.num_versions",
        "version_policy.specific",
        "version_policy.specific.versions",
        # Refused with its own message (one version at a time): see model_config.
        "version_policy.all",
        "input",
        "input.name",
        "input.data_type",
        "input.dims",
        "input.reshape",
        "input.reshape.shape",
        "output",
        "output.name",
        "output.data_type",
        "output.dims",
        "output.reshape",
        "output.reshape.shape",
        "instance_group",
        "instance_group.name",
        "instance_group.count",
        "instance_group.kind",
        "instance_group.gpus",
        "dynamic_batching",
        "dynamic_batching.preferred_batch_size",
        "dynamic_batching.max_queue_delay_microseconds",
        "dynamic_batching.default_queue_policy",
        "dynamic_batching.default_queue_policy.max_queue_size",
        # Each sample's inputs are checked where they are read (model_config._warmup).
        "model_warmup",
        "model_warmup.name",
        "model_warmup.batch_size",
        "model_warmup.inputs",
        "model_warmup.count",
    }
)


def unsupported_fields(config: Message, prefix: str = "") -> list[str]:
    """The paths of the fields set in `config` that trtserve does not implement, in order."""
    found: list[str] = []
    for field, value in config.ListFields():
        path = prefix + field.name
        if path not in SUPPORTED:
            found.append(path)
            continue
        kind = field.message_type
        if kind is None or kind.GetOptions().map_entry:
            # A value, or a map (parameters): keys are the user's, not schema fields.
            continue
        # A repeated message field's value is a container of messages.
        items = [value] if isinstance(value, Message) else list(value)
        for item in items:
            found += [p for p in unsupported_fields(item, path + ".") if p not in found]
    return found
