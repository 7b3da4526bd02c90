"""Which asyncio HTTP server trtserve's REST transport is built on: aiohttp against uvicorn.

Each candidate runs as trtserve runs it: in one process, on the default asyncio event loop
that a grpc.aio server also uses (uvloop is not an option there), serving a v2 REST infer
of the built-in `simple` model's size (a JSON body of two 16-element FP32 inputs, parsed; a
prebuilt JSON reply of two outputs) and nothing else, so what differs is the framework's own
cost per request. uvicorn runs a bare ASGI function (no framework above it) with its fastest
parser (httptools). One load process (aiohttp's client, keep-alive, closed loop) drives each
at concurrency 1, 8 and 32; one candidate after the other, 3 runs each, medians.

    python benchmarks/http_frameworks.py [--duration 3] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

MODEL_PATH = "/v2/models/simple/infer"
REQUEST = json.dumps(
    {
        "inputs": [
            {"name": n, "datatype": "FP32", "shape": [1, 16], "data": [float(i) for i in range(16)]}
            for n in ("INPUT0", "INPUT1")
        ]
    }
).encode()
REPLY = json.dumps(
    {
        "model_name": "simple",
        "model_version": "1",
        "outputs": [
            {"name": n, "datatype": "FP32", "shape": [1, 16], "data": [float(i) for i in range(16)]}
            for n in ("OUTPUT0", "OUTPUT1")
        ],
    }
).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _with_grpc(serve_http: Callable[[], Awaitable[None]]) -> None:
    """Run the HTTP server beside an (idle) grpc.aio server, as trtserve does."""
    import grpc

    server = grpc.aio.server()
    server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await serve_http()


async def _aiohttp(port: int) -> None:
    from aiohttp import web

    async def infer(request: web.Request) -> web.Response:
        json.loads(await request.read())
        return web.Response(body=REPLY, content_type="application/json")

    app = web.Application()
    app.router.add_post(MODEL_PATH, infer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


async def _uvicorn(port: int) -> None:
    import uvicorn

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        json.loads(body)
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": REPLY})

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )
    await uvicorn.Server(config).serve()


def serve(kind: str, port: int) -> None:
    run = _aiohttp if kind == "aiohttp" else _uvicorn
    asyncio.run(_with_grpc(lambda: run(port)))


async def _load(port: int, concurrency: int, duration: float) -> float:
    import aiohttp

    url = f"http://127.0.0.1:{port}{MODEL_PATH}"
    done = 0
    stop = 0.0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def one() -> None:
            async with session.post(url, data=REQUEST) as reply:
                await reply.read()

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                await one()
                done += 1

        for _ in range(concurrency):  # warm the connections
            await one()
        started = time.perf_counter()
        stop = started + duration
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - started)


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    results: dict[tuple[str, int], list[float]] = {}
    for kind in ("aiohttp", "uvicorn"):
        port = free_port()
        server = context.Process(target=serve, args=(kind, port), daemon=True)
        server.start()
        _wait_listening(port)
        for concurrency in (1, 8, 32):
            for _ in range(args.runs):
                rate = asyncio.run(_load(port, concurrency, args.duration))
                results.setdefault((kind, concurrency), []).append(rate)
        server.kill()
        server.join()
    print("| concurrency | aiohttp req/s | uvicorn (bare ASGI) req/s | uvicorn / aiohttp |")
    print("| ---: | ---: | ---: | ---: |")
    for concurrency in (1, 8, 32):
        a = statistics.median(results["aiohttp", concurrency])
        u = statistics.median(results["uvicorn", concurrency])
        print(f"| {concurrency} | {a:,.0f} | {u:,.0f} | {u / a:.2f}x |")


if __name__ == "__main__":
    main()
