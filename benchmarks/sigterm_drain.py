"""SIGTERM under load: every accepted request is answered, and the server exits in its grace.

A closed loop of `--concurrency` clients keeps the `dense` model's queue full; after
`--before-s` seconds the server gets SIGTERM. Each client goes on sending until its first
refusal. Every answer is classified by when its request was sent:

- sent before SIGTERM (accepted: in flight or queued when the signal came): it must be
  answered with outputs; any error is a lost request;
- sent after SIGTERM: refused, never run; the report counts how (UNAVAILABLE from the
  draining server, "shutting down", is what clients retry elsewhere; a request that reaches
  the transport as it closes may see CANCELLED or "failed to connect" instead).

Reports the counts, the time from SIGTERM to the process's exit, and its exit status; exits 1
when a request was lost, the exit status was not 0, or the exit took longer than the grace
period plus one second.

    python benchmarks/sigterm_drain.py --concurrency 64 --grace-s 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overload import MODEL, dense_config, request_for
from server_under_test import ServerUnderTest, percentile, start

from trtserve.protocol import grpc_service_pb2_grpc as pb_grpc
from trtserve.server.default_model import build_dense_model


def describe(error: grpc.aio.AioRpcError) -> str:
    return f"{error.code().name}: {(error.details() or '')[:60]}"


async def load(
    server: ServerUnderTest, args: argparse.Namespace
) -> tuple[Counter[str], list[float], float, int]:
    request = request_for(args.width)
    channel = grpc.aio.insecure_channel(server.address)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
    outcomes: Counter[str] = Counter()
    drain_latencies: list[float] = []
    signalled: list[float] = []

    async def worker() -> None:
        while True:
            sent_after = bool(signalled)
            try:
                await stub.ModelInfer(request, timeout=args.grace_s + 30)
            except grpc.aio.AioRpcError as error:
                if sent_after:
                    outcomes[f"sent after SIGTERM, refused: {describe(error)}"] += 1
                    return
                outcomes[f"sent before SIGTERM, LOST: {describe(error)}"] += 1
                if signalled:
                    return
                continue
            if sent_after:
                outcomes["sent after SIGTERM, answered"] += 1
            elif signalled:
                outcomes["sent before SIGTERM, answered after it"] += 1
                drain_latencies.append(time.monotonic() - signalled[0])
            else:
                outcomes["sent and answered before SIGTERM"] += 1

    workers = [asyncio.create_task(worker()) for _ in range(args.concurrency)]
    await asyncio.sleep(args.before_s)
    signalled.append(server.sigterm())
    status = await asyncio.to_thread(server.popen.wait)
    exit_s = time.monotonic() - signalled[0]
    await asyncio.wait_for(asyncio.gather(*workers), args.grace_s + 60)
    await channel.close(None)
    return outcomes, drain_latencies, exit_s, status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--before-s", type=float, default=3.0)
    parser.add_argument("--grace-s", type=float, default=10.0)
    parser.add_argument("--queue", type=int, default=256)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / MODEL / "1").mkdir(parents=True)
        (root / MODEL / "config.pbtxt").write_text(dense_config(args.width, args.queue))
        (root / MODEL / "1" / "model.onnx").write_bytes(build_dense_model(args.width, args.layers))
        server = start(root, ["--grace-period-s", str(args.grace_s)])
        try:
            outcomes, drained, exit_s, status = asyncio.run(load(server, args))
        finally:
            server.stop()
    lost = {k: v for k, v in outcomes.items() if "LOST" in k}
    report = {
        "concurrency": args.concurrency,
        "grace_s": args.grace_s,
        "outcomes": dict(outcomes),
        "lost": sum(lost.values()),
        "answered_after_sigterm": len(drained),
        "last_answer_after_sigterm_s": round(max(drained, default=0.0), 3),
        "drain_p50_s": round(percentile(drained, 50), 3),
        "exit_after_sigterm_s": round(exit_s, 3),
        "exit_status": status,
    }
    failures = []
    if lost:
        failures.append(f"accepted requests lost: {lost}")
    if status != 0:
        failures.append(f"exit status {status}")
    if exit_s > args.grace_s + 1:
        failures.append(f"exit took {exit_s:.2f} s, grace {args.grace_s} s")
    report["failures"] = failures
    print(json.dumps(report, indent=1))
    print("PASS" if not failures else "FAIL: " + "; ".join(failures))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
