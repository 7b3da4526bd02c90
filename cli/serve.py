"""`trtserve serve`: run the inference server."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

    from trtserve.server.settings import ServerSettings, SettingKind

_EPILOG = """\
Every setting can also come from a TOML file (--config, top level or a [server] table) or an
environment variable TRTSERVE_<NAME> (e.g. TRTSERVE_GRPC_PORT=9001). Flags win over the
environment, which wins over the file. Lists (trusted_plan_sha256, trusted_keys) are
comma-separated in the environment.

With no --repository, the server writes its built-in example models (ONNX, CPU) to a temporary
folder and serves them: try `trtserve infer simple` in another shell.

Access: without credentials, inference is open and load/unload/upload are refused. Give
--auth-tokens-file (lines 'TOKEN ROLE', role infer or admin) and/or mutual TLS (--tls-cert,
--tls-key, --tls-client-ca), or, on a single machine, --insecure-local-admin (binds to
127.0.0.1). The overall health check stays open; with credentials, a model's health needs a
token (role infer) and /metrics listens on 127.0.0.1 unless --metrics-host is given.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `serve` subcommand."""
    from trtserve.server.settings import SETTINGS

    parser = subparsers.add_parser(
        "serve",
        help="run the gRPC inference server",
        description="Run the KServe v2 gRPC inference server with Prometheus metrics.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="TOML settings file")
    for setting in SETTINGS.values():
        flag = "--" + setting.name.replace("_", "-")
        help_text = f"{setting.help} (default {setting.default!r}; env {setting.env})"
        # Values stay text here: load_settings converts every source the same way.
        parser.add_argument(flag, action=_action(setting.kind), default=None, help=help_text)
    parser.set_defaults(func=run)


def _action(kind: SettingKind) -> str | type[argparse.Action]:
    """How a setting's flag is given: --x/--no-x for a boolean, repeated for a tuple."""
    if kind.many:
        return "append"
    return argparse.BooleanOptionalAction if kind.scalar is bool else "store"


def settings_of(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> ServerSettings:
    """The settings from `serve`'s parsed flags, the environment (os.environ) and --config."""
    from trtserve.server.settings import SETTINGS, load_settings

    overrides = {name: getattr(args, name) for name in SETTINGS}
    return load_settings(args.config, environ, overrides)


def run(args: argparse.Namespace) -> int:
    """Load settings and serve until SIGTERM."""
    from trtserve.server.api.auth import AuthConfigError
    from trtserve.server.app import serve
    from trtserve.server.logging_setup import configure_logging
    from trtserve.server.repository.repository import ModelRepository
    from trtserve.server.tls import TlsConfigError
    from trtserve.server.transport import PortInUse
    from trtserve.server.workers.supervisor import supervise

    try:
        settings = settings_of(args)
        if settings.repository is not None:
            ModelRepository(settings.repository).check_folder()
    except ValueError as error:
        print(f"trtserve serve: {error}")
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        return asyncio.run(supervise(settings) if settings.workers > 1 else serve(settings))
    except (AuthConfigError, TlsConfigError, PortInUse) as error:
        print(f"trtserve serve: {error}")
        return 2
