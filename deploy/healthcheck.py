"""Container health check: exit 0 when the server's gRPC health service says SERVING.

Asks grpc.health.v1 for the overall service "" on 127.0.0.1:$TRTSERVE_GRPC_PORT (default 8001).
Usage: python healthcheck.py [ADDRESS] [--service NAME] [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, service: str = "", timeout: float = 3.0) -> bool:
    """Whether `service` on the server at `address` is SERVING."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as error:
            print(f"healthcheck: {address}: {error.code().name}", file=sys.stderr)
            return False
    serving = bool(response.status == health_pb2.HealthCheckResponse.SERVING)
    if not serving:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        print(f"healthcheck: {address}: {service or 'server'} is {status}", file=sys.stderr)
    return serving


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    port = os.environ.get("TRTSERVE_GRPC_PORT", "8001")
    parser.add_argument("address", nargs="?", default=f"127.0.0.1:{port}")
    parser.add_argument("--service", default="", help='health service name ("" = server)')
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    return 0 if check(args.address, args.service, args.timeout) else 1


if __name__ == "__main__":
    sys.exit(main())
