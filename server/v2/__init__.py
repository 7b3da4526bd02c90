"""The KServe v2 protocol's messages, shared by the gRPC and REST transports.

Both transports speak v2: each turns its wire format into these messages (REST from JSON and
binary tensor data), and these turn them into data plane calls and back. So validation and
error messages are the same whichever way a request arrives.
"""
