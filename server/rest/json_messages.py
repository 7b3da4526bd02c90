"""v2 messages as the REST protocol's JSON, and REST JSON bodies read into v2 messages.

The REST protocol's JSON is the messages' protobuf JSON with field names as written in the
.proto, every field present, and 64-bit integers as JSON numbers where Triton writes numbers
(metadata shapes, statistics); protobuf's own JSON writes them as strings. The model config is
protobuf's JSON as is, strings included, as Triton sends it.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from trtserve.server.errors import InvalidArgument

_INT64 = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def as_json(message: Message, int64_as_numbers: bool = True) -> dict[str, Any]:
    """`message` as a JSON object; 64-bit integers as numbers unless told otherwise."""
    body: dict[str, Any] = json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    if int64_as_numbers:
        _numbers(message.DESCRIPTOR, body)
    return body


def _numbers(descriptor: Any, body: dict[str, Any]) -> None:
    """Turn the 64-bit integers protobuf's JSON wrote as strings back into numbers."""
    for field in descriptor.fields:
        if field.name not in body:
            continue
        value = body[field.name]
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            value_field = entry.fields_by_name["value"]
            for key, item in value.items():
                value[key] = _converted(value_field, item)
        elif field.is_repeated:
            body[field.name] = [_converted(field, item) for item in value]
        else:
            body[field.name] = _converted(field, value)


def _converted(field: FieldDescriptor, value: Any) -> Any:
    if field.message_type is not None:
        _numbers(field.message_type, value)
        return value
    if field.type in _INT64:
        return int(value)
    return value


def read_object(data: bytes | memoryview, what: str) -> dict[str, Any]:
    """A request body that must be one JSON object; InvalidArgument naming `what` if not."""
    try:
        body = json.loads(bytes(data)) if len(data) else {}
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidArgument(
            f"{what}: expected a JSON object, received invalid JSON: {error}"
        ) from None
    except RecursionError:
        raise InvalidArgument(
            f"{what}: expected a JSON object, received one nested deeper than Python can read"
        ) from None
    if not isinstance(body, dict):
        raise InvalidArgument(f"{what}: expected a JSON object, received a JSON {json_kind(body)}")
    return body


# The range of a protobuf int64 and of a uint64 (a JSON integer may be any size).
INT64_MIN, INT64_MAX, UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1


def json_kind(value: object) -> str:
    """A JSON value's type as the JSON spec names it, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def field_of(
    body: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str, default: Any = None
) -> Any:
    """`body[name]` if it has JSON type `kind`, `default` when absent; InvalidArgument naming
    the field, the expected and the received type otherwise."""
    if name not in body:
        return default
    value = body[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # JSON true/false are Python bools, which are ints: never accept one for a number.
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        expected = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
        raise InvalidArgument(
            f"{where}'{name}': expected a JSON {expected}, received a JSON {json_kind(value)}"
        )
    return value


def required_field(body: dict[str, Any], name: str, kind: type, where: str) -> Any:
    """`body[name]`, which must be present with JSON type `kind` (see field_of)."""
    value = field_of(body, name, kind, where)
    if value is None:
        raise InvalidArgument(
            f"{where}'{name}': expected a JSON {_KIND_NAMES[kind]}, received none"
        )
    return value


_KIND_NAMES = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    dict: "object",
}
