"""Server memory under large admin messages from callers who may not send them.

Starts `trtserve serve` on loopback (built-in models, no --insecure-local-admin), then sends
`--calls` concurrent RepositoryModelLoad requests of `--mb` MiB each without credentials and
reports the server's RSS before, at its peak (sampled every 20 ms) and `--settle-s` seconds
after the last answer, with the status codes received.

    python benchmarks/refused_load_memory.py                       # server without credentials
    python benchmarks/refused_load_memory.py --tokens              # --auth-tokens-file, no token
    ../old/.venv/bin/python benchmarks/refused_load_memory.py   # an older install

The server runs with the interpreter that runs this script, so another virtualenv measures
another install. Bounded: every call has a 60 s deadline and the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from server_under_test import ServerUnderTest, launch

from trtserve.protocol import grpc_service_pb2 as pb

LOAD = "/inference.GRPCInferenceService/RepositoryModelLoad"


def load_request(mib: int) -> bytes:
    request = pb.RepositoryModelLoadRequest(model_name="refused")
    request.parameters["file:1/model.onnx"].bytes_param = b"\0" * ((mib << 20) - 4096)
    return request.SerializeToString()


def start_server(tokens: Path | None, extra: list[str]) -> ServerUnderTest:
    args = ["-m", "trtserve.cli.main", "serve", "--host", "127.0.0.1", "--grpc-port", "0"]
    args += ["--metrics-port", "-1"]
    if tokens is not None:
        args += ["--auth-tokens-file", str(tokens)]
    return launch([*args, *extra])


def measure(server: ServerUnderTest, calls: int, mib: int, settle_s: float) -> dict[str, object]:
    data = load_request(mib)
    before = server.rss_mib()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], server.rss_mib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    options = [("grpc.max_send_message_length", 256 << 20)]
    codes: Counter[str] = Counter()
    started = time.monotonic()
    with grpc.insecure_channel(server.address, options=options) as channel:
        call = channel.unary_unary(LOAD, request_serializer=None, response_deserializer=None)

        def one(_: int) -> str:
            try:
                call(data, timeout=60)
            except grpc.RpcError as error:
                return str(error.code().name)
            return "OK"

        with ThreadPoolExecutor(calls) as pool:
            codes.update(pool.map(one, range(calls)))
    elapsed = time.monotonic() - started
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:
        peak[0] = max(peak[0], server.rss_mib())
        time.sleep(0.1)
    done.set()
    sampler.join()
    return {
        "calls": calls,
        "mib_each": mib,
        "codes": dict(codes),
        "seconds": round(elapsed, 2),
        "rss_before_mib": round(before),
        "rss_peak_mib": round(peak[0]),
        "rss_after_mib": round(server.rss_mib()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=32)
    parser.add_argument("--mb", type=int, default=60)
    parser.add_argument("--tokens", action="store_true", help="serve with --auth-tokens-file")
    parser.add_argument("--settle-s", type=float, default=3.0)
    parser.add_argument("server_args", nargs="*", help="more `trtserve serve` flags (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tokens = None
        if args.tokens:
            tokens = Path(tmp) / "tokens"
            tokens.write_text("admin-token-0123456789abcdef admin\n")
        server = start_server(tokens, args.server_args)
        try:
            result = measure(server, args.calls, args.mb, args.settle_s)
        finally:
            server.stop()
    result["tokens"] = args.tokens
    result["server_args"] = args.server_args
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
