"""The KServe v2 REST transport (HTTP/1.1, JSON and binary tensor data), beside gRPC."""
