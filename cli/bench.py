"""`trtserve bench`: a load generator; prints throughput and latency percentiles."""

from __future__ import annotations

import argparse
import sys

from trtserve.cli.connection import add_connection_arguments, connect, tls_of
from trtserve.cli.infer import parse_input_files
from trtserve.client import InferenceServerError, run_load
from trtserve.client.bench_regions import SHARED_MEMORY_KINDS
from trtserve.client.cuda_shared_memory import CudaSharedMemoryError
from trtserve.client.request import random_inputs
from trtserve.protocol.allocator import reuse_freed_memory

DEFAULT_REQUESTS = 1000

_DESCRIPTION = f"""\
Send the same inference request from --concurrency concurrent tasks, each sending its next
request as soon as the last one is answered, until --requests were sent or --duration
seconds passed ({DEFAULT_REQUESTS} requests when neither is given). Prints the throughput of
successful requests, latency percentiles p50/p90/p99 and failures by gRPC status.

Inputs are random, shaped from the model's metadata with batch size --batch, unless given
with --input NAME=FILE.npy.

With --shared-memory system or cuda, tensors go by reference instead of inside the messages:
each concurrent task gets a region of its own (a /dev/shm object, or GPU memory on device 0
for cuda) holding its inputs and outputs, registered with the server before the run and
unregistered and removed after it, also on errors and Ctrl-C. The server must run on this
host, and its --max-shared-memory-regions (64) caps --concurrency. Outputs of datatype BYTES
still come back in the response.

example:
  trtserve bench simple --concurrency 32 --duration 10
  trtserve bench simple --requests 5000 --json --no-progress > result.json
  trtserve bench simple --concurrency 16 --shared-memory system
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `bench` subcommand."""
    p = subparsers.add_parser(
        "bench",
        help="load-test a model: throughput and p50/p90/p99 latency",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="model name")
    add_connection_arguments(p)
    p.add_argument("--concurrency", type=int, default=8, metavar="C", help="requests in flight (8)")
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="P",
        help="load processes sharing the concurrency (1); one tops out at a few thousand req/s",
    )
    limit = p.add_mutually_exclusive_group()
    limit.add_argument("--requests", type=int, metavar="N", help="total requests to send")
    limit.add_argument("--duration", type=float, metavar="S", help="seconds to send requests")
    p.add_argument("--batch", type=int, default=1, metavar="N", help="batch size per request (1)")
    p.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME=FILE.npy",
        help="take input NAME from a .npy file instead of random data (repeatable)",
    )
    p.add_argument(
        "--shared-memory",
        choices=SHARED_MEMORY_KINDS,
        default="none",
        help="pass tensors in messages (none, the default) or by reference to a system or "
        "CUDA shared-memory region per task",
    )
    p.add_argument("--version", default="", metavar="V", help="model version (server's choice)")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="per-request deadline")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (on stderr)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `trtserve bench`; 1 on a server error, 2 on bad arguments, 130 on Ctrl-C."""
    requests = args.requests
    if requests is None and args.duration is None:
        requests = DEFAULT_REQUESTS
    reuse_freed_memory()  # a load generator moves large messages: see trtserve.protocol.allocator
    try:
        given = parse_input_files(args.input)
        if args.batch < 1:
            raise ValueError(f"--batch must be at least 1, received {args.batch}")
        with connect(args, timeout=args.timeout) as client:
            metadata = client.model_metadata(args.model, args.version)
            max_batch_size = int(
                client.model_config(args.model, args.version).get("max_batch_size", 0)
            )
        inputs = random_inputs(
            metadata, batch=args.batch, max_batch_size=max_batch_size, given=given
        )
        result = run_load(
            args.address,
            args.model,
            inputs,
            concurrency=args.concurrency,
            requests=requests,
            duration_s=args.duration,
            progress=not args.no_progress,
            version=args.version,
            timeout=args.timeout,
            processes=args.processes,
            tls=tls_of(args),
            shared_memory=args.shared_memory,
        )
    except InferenceServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError, CudaSharedMemoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # The regions of --shared-memory are released by then.
        print("interrupted", file=sys.stderr)
        return 130
    print(result.to_json() if args.json else result.summary())
    return 0
