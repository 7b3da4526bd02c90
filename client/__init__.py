"""trtserve's Python client: sync and asyncio, over the KServe v2 gRPC protocol::

    import numpy as np
    from trtserve.client import InferenceClient, InferInput
    with InferenceClient("127.0.0.1:8001") as client:
        x = np.ones((1, 16), dtype=np.float32)
        result = client.infer("simple", [InferInput("INPUT0", x), InferInput("INPUT1", x)])
        print(result.as_numpy("OUTPUT0"))

Failed calls raise InferenceServerError, which carries the gRPC status code and message.
Tensors can also go by reference to a shared-memory region: see SystemSharedMemoryRegion
(trtserve.client.shared_memory) and CudaSharedMemoryRegion (trtserve.client.cuda_shared_memory).
"""

from trtserve.client.aio import AsyncInferenceClient
from trtserve.client.bench import BenchResult, run_load, run_load_async
from trtserve.client.cuda_shared_memory import CudaSharedMemoryError, CudaSharedMemoryRegion
from trtserve.client.errors import InferenceServerError
from trtserve.client.shared_memory import SystemSharedMemoryRegion
from trtserve.client.sync import InferenceClient
from trtserve.client.tls import TlsConfig
from trtserve.client.types import (
    BatchStatistics,
    CudaRegionStatus,
    Duration,
    InferInput,
    InferRequest,
    InferResult,
    ModelIndexEntry,
    ModelMetadata,
    ModelStatistics,
    ServerMetadata,
    SharedMemoryInput,
    SharedMemoryOutput,
    SystemRegionStatus,
    TensorMetadata,
    UploadResult,
)

__all__ = [
    "AsyncInferenceClient",
    "BatchStatistics",
    "BenchResult",
    "CudaRegionStatus",
    "CudaSharedMemoryError",
    "CudaSharedMemoryRegion",
    "Duration",
    "InferInput",
    "InferRequest",
    "InferResult",
    "InferenceClient",
    "InferenceServerError",
    "ModelIndexEntry",
    "ModelMetadata",
    "ModelStatistics",
    "ServerMetadata",
    "SharedMemoryInput",
    "SharedMemoryOutput",
    "SystemRegionStatus",
    "SystemSharedMemoryRegion",
    "TensorMetadata",
    "TlsConfig",
    "UploadResult",
    "run_load",
    "run_load_async",
]
