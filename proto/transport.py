"""gRPC options both ends set for large tensors: fixed HTTP/2 flow-control windows.

By default gRPC sizes each stream's receive window by bandwidth-delay probing. On loopback and
fast networks that leaves the window at 64 KiB in some connections and not in others, so a
server answering 3.2 MB responses runs at one of two speeds, half apart, from one start to the
next (benchmarks/multi_gpu_bench.py and docs/gpu-results.md have the numbers). A fixed window
of a few MiB on both ends gives the fast one every time; it costs memory only while a message
that large is in flight.
"""

from __future__ import annotations

DEFAULT_WINDOW_BYTES = 4 << 20


def flow_control_options(window_bytes: int = DEFAULT_WINDOW_BYTES) -> list[tuple[str, int]]:
    """Channel or server options for a fixed per-stream window; none (gRPC's probing) for 0."""
    if window_bytes < 0:
        raise ValueError(f"window_bytes: expected 0 or more, received {window_bytes}")
    if window_bytes == 0:
        return []
    return [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", window_bytes)]
