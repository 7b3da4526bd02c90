"""The one error the client raises for a failed call: the server's gRPC status."""

from __future__ import annotations

import grpc


class InferenceServerError(Exception):
    """A call failed with a gRPC status; `code` and `message` are the server's."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type[InferenceServerError], tuple[grpc.StatusCode, str]]:
        # Rebuilt from code and message, so it survives pickling (bench load processes).
        return (type(self), (self.code, self.message))

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> InferenceServerError:
        """Wrap a grpc.RpcError (sync or aio); both carry code() and details()."""
        code_fn = getattr(error, "code", None)
        details_fn = getattr(error, "details", None)
        code = code_fn() if callable(code_fn) else None
        details = details_fn() if callable(details_fn) else None
        return cls(
            code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN,
            details if isinstance(details, str) else str(error),
        )
