"""The descriptor pool of trtserve's generated protocol code: its own, not protobuf's default.

Triton's client (tritonclient.grpc) registers the same `inference.*` messages in protobuf's
default pool, from its own copy of the .proto files; two definitions of one name in one pool
cannot be imported together. With a pool of its own, trtserve's protocol code and Triton's
client live in one process (a test harness may use both). scripts/generate_protocol.py points
the generated modules here; the messages themselves are the same on the wire.
"""

from __future__ import annotations

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
