"""The one TensorRT logger of the process: thread-safe, forwarding to Python logging.

TensorRT keeps a pointer to the logger given to a runtime for as long as anything made from that
runtime lives, so the logger is a module-level singleton that is never destroyed. It also keeps
recent error messages, so a failed deserialization can quote what TensorRT said instead of
returning only None.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

_log = logging.getLogger("trtserve.tensorrt")

# TensorRT's ILogger.Severity values.
INTERNAL_ERROR = 0
ERROR = 1
WARNING = 2
INFO = 3
VERBOSE = 4

_LEVELS = {
    INTERNAL_ERROR: logging.CRITICAL,
    ERROR: logging.ERROR,
    WARNING: logging.WARNING,
    # TensorRT's INFO is chatty (every deserialization); it stays at DEBUG.
    INFO: logging.DEBUG,
    VERBOSE: logging.DEBUG,
}


@dataclass(frozen=True)
class LogMessage:
    """One error TensorRT reported, numbered in arrival order."""

    serial: int
    severity: int
    thread_id: int
    text: str


class LogRecorder:
    """Recent TensorRT errors, thread-safe; TensorRT may log from any thread."""

    def __init__(self, keep: int = 64) -> None:
        self._lock = threading.Lock()
        self._messages: deque[LogMessage] = deque(maxlen=keep)
        self._serial = 0

    def record(self, severity: int, text: str) -> None:
        _log.log(_LEVELS.get(severity, logging.ERROR), "%s", text)
        if severity > ERROR:
            return
        with self._lock:
            self._serial += 1
            self._messages.append(LogMessage(self._serial, severity, threading.get_ident(), text))

    def mark(self) -> int:
        """A position; `errors_since(mark)` gives the errors recorded after it."""
        with self._lock:
            return self._serial

    def errors_since(self, mark: int) -> list[str]:
        """Errors after `mark`, preferring those logged by the calling thread.

        A deserialization logs on its caller's thread, so with several loads at once each one
        quotes its own errors; errors from other threads are the fallback.
        """
        me = threading.get_ident()
        with self._lock:
            recent = [m for m in self._messages if m.serial > mark]
        own = [m.text for m in recent if m.thread_id == me]
        return own or [m.text for m in recent]


RECORDER = LogRecorder()

_loggers: dict[str, Any] = {}
_loggers_lock = threading.Lock()


def trt_logger(trt: Any) -> Any:
    """The process's ILogger for TensorRT module `trt`, created once and never released."""
    key = getattr(trt, "__name__", repr(trt))
    with _loggers_lock:
        logger = _loggers.get(key)
        if logger is None:
            logger = _make_logger_class(trt.ILogger)()
            _loggers[key] = logger
        return logger


def _severity(value: Any) -> int:
    try:
        return int(getattr(value, "value", value))
    except (TypeError, ValueError):
        return ERROR


def _make_logger_class(base: type) -> type:
    class TrtLogger(base):  # type: ignore[misc, valid-type]
        """Forwards TensorRT messages to RECORDER; must never raise into TensorRT."""

        def __init__(self) -> None:
            # pybind11 classes need their own __init__ called explicitly.
            base.__init__(self)  # type: ignore[misc]

        def log(self, severity: Any, msg: str) -> None:
            # An exception thrown back into TensorRT's C++ would abort the process.
            with contextlib.suppress(Exception):
                RECORDER.record(_severity(severity), str(msg))

    return TrtLogger
