"""What a worker process is started with: its place in the server and what to serve."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from trtserve.protocol import cluster_pb2 as pb

# In the supervisor's run folder: its socket, one per worker, and the metrics files.
SUPERVISOR_SOCKET = "supervisor.sock"
METRICS_FOLDER = "metrics"
# prometheus-client's multiprocess mode: where each worker writes its metrics (read at import).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def worker_socket(run_dir: Path, index: int) -> Path:
    """The Unix socket a worker takes the supervisor's calls on."""
    return run_dir / f"worker-{index}.sock"


def socket_address(path: Path) -> str:
    """A Unix socket path as grpc names it."""
    return f"unix:{path}"


def private_socket(name: str, handler: grpc.RpcMethodHandler[Any, Any]) -> Any:
    """The access check of the control sockets: none, as only this user can reach them (they
    live in the supervisor's run folder, mode 0700)."""
    return handler


@dataclass(frozen=True)
class ClusterState:
    """What every worker serves: the models' versions and the registered regions, in order.

    A worker that starts after the first (at start-up, or restarted after a crash) loads
    exactly this before it takes requests; `unavailable` (a model's name: why it is not
    served) lets it answer for the others as they do.
    """

    models: dict[str, tuple[int, ...]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    system_regions: dict[str, pb.SystemRegion] = field(default_factory=dict)
    cuda_regions: dict[str, pb.CudaRegion] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerSpec:
    """One worker: its index, the run folder, and the state to join (None: load the repository)."""

    index: int
    run_dir: Path
    join: ClusterState | None

    @property
    def supervisor_address(self) -> str:
        return socket_address(self.run_dir / SUPERVISOR_SOCKET)

    @property
    def address(self) -> str:
        return socket_address(worker_socket(self.run_dir, self.index))
