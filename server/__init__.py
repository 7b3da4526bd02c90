"""The trtserve inference server.

Layers, each importing only the ones below it:

- ``api``: gRPC servicers (KServe v2 inference, health, upload) and the one place where
  server errors become gRPC statuses.
- ``models``: the model manager: load, unload, versions and state of every model.
- ``scheduler``: per-model dynamic batching queues and instance workers.
- ``backends``: ONNX Runtime and TensorRT execution of one batch.
- ``runtime``: TensorRT dispatch and lean runtimes, plan headers, CUDA devices and memory.

Foundation modules any layer may import: ``errors``, ``specs``, ``metrics``, ``settings`` and
``repository`` (the model files on disk).
"""
