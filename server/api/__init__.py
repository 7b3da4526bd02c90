"""gRPC servicers: the v2 inference service, model upload and health."""
