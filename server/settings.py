"""Server settings from defaults, a TOML file, TRTSERVE_* environment variables and flags.

Later sources win: defaults < config file < environment < command-line flags. `SETTINGS`
describes each field once, from its type, for both this loader and the `serve` flags.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType, UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

ENV_PREFIX = "TRTSERVE_"
# Addresses that only this machine reaches; `insecure_local_admin` binds to one of them.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
# glibc's mallopt takes a C int of bytes.
MALLOC_KEEP_MB_MAX = 2047
GPU_WAITS = ("spin", "block")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class ServerSettings:
    """Everything `trtserve serve` can be told; field docs are the `--help` texts."""

    host: str | None = field(
        default=None,
        metadata={
            "help": "address to bind gRPC, HTTP and metrics to (default 0.0.0.0, every interface; "
            "127.0.0.1 with insecure_local_admin, which refuses any other)"
        },
    )
    grpc_port: int = field(default=8001, metadata={"help": "gRPC port (0 picks a free one)"})
    http_port: int = field(
        default=8000,
        metadata={"help": "KServe v2 REST (HTTP) port, as Triton's (0 picks one, -1 disables)"},
    )
    metrics_port: int = field(
        default=8002, metadata={"help": "Prometheus /metrics HTTP port (0 picks one, -1 disables)"}
    )
    metrics_host: str | None = field(
        default=None,
        metadata={
            "help": "address to bind /metrics to (its labels name every model); default: host, "
            "or 127.0.0.1 when bearer tokens or mutual TLS are configured"
        },
    )
    max_connections: int | None = field(
        default=None,
        metadata={
            "help": "most TCP connections the gRPC port, and the HTTP port, each hold at once, "
            "more are closed as they "
            "arrive; default: the open-file limit (raised to its hard limit at start) less 256 "
            "kept for model files, or half of it when that is lower, split between the two ports"
        },
    )
    handshake_timeout_s: float = field(
        default=10.0,
        metadata={
            "help": "seconds a new connection gets to complete its TLS and HTTP/2 handshake "
            "before it is closed (a silent socket holds a connection slot until then)"
        },
    )
    keepalive_time_s: float = field(
        default=60.0,
        metadata={
            "help": "seconds without traffic after which the server pings a client, to find "
            "dead or frozen peers"
        },
    )
    keepalive_timeout_s: float = field(
        default=20.0,
        metadata={"help": "seconds a client gets to answer a keepalive ping before it is closed"},
    )
    workers: int = field(
        default=1,
        metadata={
            "help": "server processes sharing the gRPC and HTTP ports, each with its own event "
            "loop, models and GPU memory (one process tops out at its Python work per request); "
            "model and shared-memory changes apply to all of them"
        },
    )
    repository: Path | None = field(
        default=None,
        metadata={"help": "model repository folder; none serves the built-in example models"},
    )
    runtimes_dir: Path | None = field(
        default=None, metadata={"help": "TensorRT lean runtimes folder (`trtserve runtimes`)"}
    )
    max_message_mb: int = field(
        default=64,
        metadata={
            "help": "largest gRPC message or HTTP body in MiB, both ways (raise for huge tensors)"
        },
    )
    malloc_keep_mb: int = field(
        default=64,
        metadata={
            "help": "freed memory the C allocator keeps for reuse, in MiB, so large tensors do "
            "not fault in fresh pages each request (glibc; 0 keeps its defaults)"
        },
    )
    gpu_wait: str = field(
        default="spin",
        metadata={
            "help": "how a TensorRT instance waits for the GPU to finish a request: spin (a "
            "core busy while it waits, the lowest latency) or block (the thread sleeps: less "
            "CPU per request, which matters when the cores are all busy, e.g. with many workers)"
        },
    )
    max_queue_size: int = field(
        default=1024,
        metadata={"help": "default per-model queue limit; over it: RESOURCE_EXHAUSTED"},
    )
    max_inline_execution_us: int = field(
        default=1000,
        metadata={
            "help": "a model without dynamic batching whose executions take at most this many "
            "microseconds (its compute times, averaged) runs a request on the event loop itself "
            "when an instance is free, saving two thread hand-offs; 0 keeps every execution on "
            "the instance threads"
        },
    )
    max_stream_in_flight: int = field(
        default=64,
        metadata={
            "help": "requests of one ModelStreamInfer stream in flight, read and not yet "
            "answered; at it the server stops reading the stream until the client reads replies"
        },
    )
    max_upload_mb: int = field(default=4096, metadata={"help": "largest uploaded model file"})
    max_tensor_elements: int = field(
        default=1 << 26,
        metadata={
            "help": "most elements in one input tensor, checked before decoding; over it: "
            "RESOURCE_EXHAUSTED (raise together with max_message_mb)"
        },
    )
    max_bytes_elements: int = field(
        default=1 << 21,
        metadata={
            "help": "most BYTES elements in one request (all its BYTES inputs), checked "
            "before decoding: each costs about 100 bytes of server memory; over it: "
            "RESOURCE_EXHAUSTED"
        },
    )
    max_shared_memory_regions: int = field(
        default=64,
        metadata={
            "help": "shared-memory regions (system and CUDA together) registered at once; "
            "one more is refused with RESOURCE_EXHAUSTED"
        },
    )
    max_shared_memory_mb: int = field(
        default=65536,
        metadata={
            "help": "MiB all registered shared-memory regions may span together (system "
            "regions are mapped and, with a GPU, pinned); over it: RESOURCE_EXHAUSTED"
        },
    )
    max_concurrent_uploads: int = field(
        default=4,
        metadata={
            "help": "uploads and file-carrying loads in progress at once; one more is refused "
            "with RESOURCE_EXHAUSTED"
        },
    )
    upload_idle_timeout_s: float = field(
        default=30.0,
        metadata={
            "help": "seconds an upload may go without a message; then DEADLINE_EXCEEDED, its "
            "slot is freed and its partial file removed"
        },
    )
    grace_period_s: float = field(
        default=10.0, metadata={"help": "on SIGTERM, seconds in-flight requests get to finish"}
    )
    allow_runtime_install: bool = field(
        default=False,
        metadata={"help": "install a missing TensorRT lean runtime on first need (network)"},
    )
    probe_plans: bool = field(
        default=True,
        metadata={
            "help": "deserialize each TensorRT plan in a child process before loading it, so "
            "a damaged plan that crashes TensorRT cannot take the server down"
        },
    )
    preload_runtimes: tuple[str, ...] = field(
        default=(),
        metadata={"help": "TensorRT lean runtime versions to load at start (e.g. 11.0.0.114)"},
    )
    trusted_plan_sha256: tuple[str, ...] = field(
        default=(),
        metadata={"help": "sha256 of plans with an embedded lean runtime allowed to run"},
    )
    trusted_keys: tuple[Path, ...] = field(
        default=(),
        metadata={"help": "ed25519 public keys whose signed plans may run embedded host code"},
    )
    auth_tokens_file: Path | None = field(
        default=None,
        metadata={
            "help": "bearer tokens, one 'TOKEN ROLE' a line (role infer or admin; a mounted "
            "secret works); set: every call but health needs a token"
        },
    )
    tls_cert: Path | None = field(
        default=None,
        metadata={"help": "server certificate chain (PEM); with --tls-key, gRPC goes over TLS"},
    )
    tls_key: Path | None = field(default=None, metadata={"help": "server private key (PEM)"})
    tls_client_ca: Path | None = field(
        default=None,
        metadata={
            "help": "CA certificates (PEM) for client certificates; set: clients must present "
            "one it signed (mutual TLS)"
        },
    )
    tls_client_roles: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "roles of client certificates by subject CN, 'CN=ROLE'; '*=ROLE' for "
            "other verified certificates (default admin)"
        },
    )
    insecure_local_admin: bool = field(
        default=False,
        metadata={
            "help": "allow load, unload and upload without credentials; binds to 127.0.0.1 "
            "(one machine only, never in a shared network)"
        },
    )
    log_level: str = field(default="INFO", metadata={"help": "DEBUG, INFO, WARNING or ERROR"})
    log_format: str = field(default="text", metadata={"help": "text or json (one object a line)"})

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(
                "settings tls_cert and tls_key: expected both or neither, received "
                f"tls_cert={self.tls_cert}, tls_key={self.tls_key}"
            )
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError(
                "setting tls_client_ca: mutual TLS needs a server certificate; "
                "expected tls_cert and tls_key as well, received neither"
            )
        if self.insecure_local_admin and (
            self.auth_tokens_file is not None or self.tls_client_ca is not None
        ):
            raise ValueError(
                "setting insecure_local_admin: gives admin to every caller, so it cannot be "
                "combined with auth_tokens_file or tls_client_ca; expected one or the other"
            )
        if self.insecure_local_admin and self.host is not None and self.host not in LOOPBACK_HOSTS:
            raise ValueError(
                "setting insecure_local_admin: gives admin to every caller, so the server "
                "listens on this machine only; expected host unset or one of "
                f"{', '.join(sorted(LOOPBACK_HOSTS))}, received host {self.host!r}"
            )
        if self.max_inline_execution_us < 0:
            raise ValueError(
                "setting max_inline_execution_us: expected 0 (off) or a positive number of "
                f"microseconds, received {self.max_inline_execution_us}"
            )
        # Levels in any case, as logging takes them; the other choices exactly.
        for setting, choices, value in (
            ("log_level", LOG_LEVELS, self.log_level.upper()),
            ("log_format", LOG_FORMATS, self.log_format),
            ("gpu_wait", GPU_WAITS, self.gpu_wait),
        ):
            if value not in choices:
                raise ValueError(
                    f"setting {setting}: expected one of {', '.join(choices)}, received "
                    f"{getattr(self, setting)!r}"
                )
        if not 0 <= self.malloc_keep_mb <= MALLOC_KEEP_MB_MAX:
            raise ValueError(
                f"setting malloc_keep_mb: expected 0 to {MALLOC_KEEP_MB_MAX}, received "
                f"{self.malloc_keep_mb}"
            )
        positive = [
            "max_tensor_elements",
            "max_bytes_elements",
            "max_concurrent_uploads",
            "max_upload_mb",
            "max_stream_in_flight",
            "max_shared_memory_regions",
            "max_shared_memory_mb",
            "workers",
        ]
        if self.max_connections is not None:
            positive.append("max_connections")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(
                    f"setting {name}: expected a positive integer, received {getattr(self, name)}"
                )
        for name in (
            "upload_idle_timeout_s",
            "handshake_timeout_s",
            "keepalive_time_s",
            "keepalive_timeout_s",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(
                    f"setting {name}: expected a positive number of seconds, received "
                    f"{getattr(self, name)}"
                )

    @property
    def tls_files(self) -> tuple[Path, Path] | None:
        """The certificate and key files when TLS is on (the pair is checked above)."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        return self.tls_cert, self.tls_key

    @property
    def bind_host(self) -> str:
        """The address the ports bind to: `host`, else every interface, or loopback when
        insecure_local_admin is on."""
        if self.host is not None:
            return self.host
        return "127.0.0.1" if self.insecure_local_admin else "0.0.0.0"

    @property
    def metrics_bind_host(self) -> str:
        """Where /metrics listens: metrics_host, else loopback when credentials guard gRPC."""
        if self.metrics_host:
            return self.metrics_host
        if self.auth_tokens_file is not None or self.tls_client_ca is not None:
            return "127.0.0.1"
        return self.bind_host


def env_name(name: str) -> str:
    """The environment variable of a setting."""
    return ENV_PREFIX + name.upper()


_SCALARS: tuple[type, ...] = (str, int, float, bool, Path)
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


@dataclass(frozen=True)
class SettingKind:
    """What a setting holds: a scalar type, maybe None, or a tuple of that scalar."""

    scalar: type
    optional: bool = False
    many: bool = False

    @classmethod
    def of(cls, hint: Any) -> SettingKind:
        """The kind of a resolved field type; TypeError for a type the sources cannot give."""
        origin, args = get_origin(hint), get_args(hint)
        if origin in (Union, UnionType) and type(None) in args and len(args) == 2:
            inner = cls.of(next(a for a in args if a is not type(None)))
            if not inner.optional and not inner.many:
                return cls(inner.scalar, optional=True)
        elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            inner = cls.of(args[0])
            if not inner.optional and not inner.many:
                return cls(inner.scalar, many=True)
        elif hint in _SCALARS:
            return cls(hint)
        raise TypeError(f"setting type {hint!r}: expected one of {_SCALARS}, optional or a tuple")

    @property
    def label(self) -> str:
        """The type as annotated, for messages: 'int', 'Path | None', 'tuple[str, ...]'."""
        name = self.scalar.__name__
        if self.many:
            return f"tuple[{name}, ...]"
        return f"{name} | None" if self.optional else name

    def convert(self, value: Any) -> Any:
        """`value` from TOML, the environment or a flag as this kind; ValueError if it is not."""
        if self.many:
            # Lists come comma-separated (environment) or repeated (flags, TOML): accept both.
            if not isinstance(value, str | list | tuple):
                raise ValueError("expected text or a list")
            raw = [value] if isinstance(value, str) else value
            items = (part.strip() for item in raw for part in str(item).split(","))
            return tuple(self._scalar(item) for item in items if item)
        if self.optional and value in (None, ""):
            return None
        if isinstance(value, list | tuple | dict):
            raise ValueError("a list or table for a single value")
        return self._scalar(value)

    def _scalar(self, value: Any) -> Any:
        if self.scalar is bool:
            return _boolean(value)
        # TOML has its own booleans and floats: `port = true` or `= 8001.5` is a mistake.
        if isinstance(value, bool) or (self.scalar is int and isinstance(value, float)):
            raise ValueError(f"a {type(value).__name__}")
        if self.scalar is Path:
            return Path(value).expanduser()
        return self.scalar(value)


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in _TRUE | _FALSE:
        raise ValueError(text)
    return text in _TRUE


@dataclass(frozen=True)
class Setting:
    """One field of ServerSettings as the sources see it: its kind, default and help."""

    name: str
    kind: SettingKind
    default: Any
    help: str

    @property
    def env(self) -> str:
        """Its environment variable."""
        return env_name(self.name)

    def convert(self, value: Any) -> Any:
        """`value` as this setting's kind; ValueError naming the setting, type and value."""
        try:
            return self.kind.convert(value)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"setting {self.name}: expected {self.kind.label}, received {value!r}"
            ) from error


def _describe(cls: type[Any]) -> dict[str, Setting]:
    # The module uses postponed annotations: field.type is text, resolved here once.
    hints = get_type_hints(cls)
    return {
        f.name: Setting(
            f.name,
            SettingKind.of(hints[f.name]),
            None if f.default is MISSING else f.default,
            f.metadata.get("help", ""),
        )
        for f in fields(cls)
    }


SETTINGS: Mapping[str, Setting] = MappingProxyType(_describe(ServerSettings))


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ServerSettings:
    """Merge the sources; `overrides` are flags given on the command line (None = not given)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if config_file is not None:
        data = tomllib.loads(config_file.read_text())
        data = data.get("server", data)
        unknown = sorted(set(data) - set(SETTINGS))
        if unknown:
            raise ValueError(
                f"{config_file}: unknown settings {unknown}; known: {sorted(SETTINGS)}"
            )
        values.update(data)
    for setting in SETTINGS.values():
        if setting.env in environ:
            values[setting.name] = environ[setting.env]
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
    converted = {name: SETTINGS[name].convert(value) for name, value in values.items()}
    return ServerSettings(**converted)
