"""The protocol floor: a bare grpc.aio server that answers ModelInfer without doing anything.

It implements only `inference.GRPCInferenceService/ModelInfer`, through the generated servicer
base, and answers every request with one prebuilt ModelInferResponse holding zero-filled raw
outputs of the model's shape. What it costs per request is what grpcio, protobuf and the event
loop cost in Python: no server built the same way can be faster, so our server is measured
against it.

    python benchmarks/floor_server.py --output OUTPUT0:FP32:1,16 --output OUTPUT1:FP32:1,16

prints `floor: serving gRPC on HOST:PORT` once ready and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc

# Run as a script: the sibling modules are importable from the script's folder.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tensor_arg import TensorArg, tensor_argument

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import grpc_service_pb2_grpc as pb_grpc
from trtserve.protocol.allocator import DEFAULT_KEEP_BYTES, reuse_freed_memory

# The same message limits as `trtserve serve` by default, so both parse the same way.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def prebuilt_response(
    model: str, outputs: Sequence[TensorArg], placed: bool = False
) -> pb.ModelInferResponse:
    """The one response the floor sends: the model's outputs, zero-filled, as raw bytes.

    `placed`: as if every output had been written into shared memory, which a server answers
    with an empty raw_output_contents entry per output (a reply of a few dozen bytes).
    """
    reply = pb.ModelInferResponse(model_name=model, model_version="1")
    for out in outputs:
        reply.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
        reply.raw_output_contents.append(b"" if placed else out.zero_bytes())
    return reply


class FloorServicer(pb_grpc.GRPCInferenceServiceServicer):
    """ModelInfer answers the prebuilt response; every other RPC is UNIMPLEMENTED."""

    def __init__(self, response: pb.ModelInferResponse) -> None:
        self._response = response

    async def ModelInfer(
        self,
        request: pb.ModelInferRequest,
        context: grpc.aio.ServicerContext[pb.ModelInferRequest, pb.ModelInferResponse],
    ) -> pb.ModelInferResponse:
        return self._response


async def serve(host: str, port: int, response: pb.ModelInferResponse) -> None:
    """Serve until SIGTERM or SIGINT."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(FloorServicer(response), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"floor: serving gRPC on {host}:{bound}", flush=True)
    await stop.wait()
    await server.stop(1.0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--model", default="simple", help="model name put in the response")
    parser.add_argument(
        "--output",
        action="append",
        required=True,
        type=tensor_argument,
        help="NAME:DATATYPE:SHAPE of an output, e.g. OUTPUT0:FP32:1,16 (repeat per output)",
    )
    parser.add_argument(
        "--malloc-keep-mb",
        type=int,
        default=DEFAULT_KEEP_BYTES >> 20,
        help="as `trtserve serve --malloc-keep-mb`; 0 keeps glibc's defaults (default %(default)s)",
    )
    parser.add_argument(
        "--placed-outputs",
        action="store_true",
        help="answer as for outputs placed in shared memory: empty raw_output_contents entries",
    )
    args = parser.parse_args(argv)
    # As `trtserve serve` does by default, so the floor is the same process, minus the server.
    reuse_freed_memory(args.malloc_keep_mb << 20)
    asyncio.run(
        serve(args.host, args.port, prebuilt_response(args.model, args.output, args.placed_outputs))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
