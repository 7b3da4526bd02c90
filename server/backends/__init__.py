"""Backends: load a model file and execute batches on it (ONNX Runtime, TensorRT)."""
