"""The wire protocol shared by the trtserve server and client.

Generated modules (regenerate with ``python scripts/generate_protocol.py``):

- ``grpc_service_pb2`` / ``grpc_service_pb2_grpc``: the KServe v2 inference service.
- ``model_config_pb2``: the model configuration schema (Triton-compatible subset).
- ``trtserve_pb2`` / ``trtserve_pb2_grpc``: trtserve's own RPCs (model upload).

Hand-written: ``datatypes`` (v2 datatype names and numpy dtypes), ``tensors`` (numpy arrays
to and from protocol tensors), ``allocator`` (glibc settings for processes that move large
messages), ``wire_fields`` (a message's fields walked without parsing it) and
``descriptor_pool`` (the pool the generated modules register in, apart from protobuf's default
one, where Triton's client registers the same names).
"""
