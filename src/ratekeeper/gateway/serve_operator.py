"""``ratekeeper serve``'s operator options: environment, admin listener, reload, logs.

- Every ``serve`` option can come from the environment: ``--store`` from ``RATEKEEPER_STORE``,
  ``--max-connections`` from ``RATEKEEPER_MAX_CONNECTIONS``, and so on (``RATEKEEPER_POLICY``
  also names ``--config``); flags take ``1``/``true``/``yes``; ``RATEKEEPER_TRUST_PROXY`` a
  comma-separated list. The command line wins. The admin token is read from
  ``RATEKEEPER_ADMIN_TOKEN`` only, so it never shows in the process list.
- ``--admin HOST:PORT`` or ``--admin unix:PATH`` opens the admin listener; off loopback it
  needs the token, and ``serve`` refuses to start without one.
- The policy is reloaded on SIGHUP and, with ``--watch``, when its file changes (see
  :mod:`ratekeeper.gateway.reload`); workers ignore SIGHUP (only the supervisor reloads).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import stat
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from uvicorn.supervisors import Multiprocess

from ratekeeper.errors import GatewayConfigError
from ratekeeper.gateway.admin.api import admin_token_needed
from ratekeeper.gateway.app import ServeSettings
from ratekeeper.gateway.logs import LOG_FORMATS
from ratekeeper.gateway.operating import (
    OPERATOR_VARIABLE,
    SUPERVISOR_VARIABLE,
    TOKEN_VARIABLE,
    OperatorSettings,
)
from ratekeeper.gateway.reload import PolicyChannel, PolicyReloader

__all__ = [
    "OperatorRun",
    "ReloadingMultiprocess",
    "add_operator_arguments",
    "operator_words",
    "with_environment",
]

log = logging.getLogger("ratekeeper.gateway")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_ALIASES = {"--config": ("RATEKEEPER_POLICY",)}


def add_operator_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--admin``, ``--decision-endpoint``, ``--watch``, ``--log-format``, ``--access-log``."""
    parser.add_argument(
        "--admin",
        metavar="HOST:PORT|unix:PATH",
        help="the admin listener: /admin/ (API), /metrics, /healthz, apart from the traffic "
        "port; needs RATEKEEPER_ADMIN_TOKEN unless on loopback or a unix socket",
    )
    parser.add_argument(
        "--decision-endpoint",
        action="store_true",
        help="with --admin: also answer /_ratekeeper/decide and /report on the traffic port "
        "(for nginx, Traefik, Envoy)",
    )
    parser.add_argument(
        "--watch", action="store_true", help="reload the policy when its file changes"
    )
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="text")
    parser.add_argument(
        "--access-log", action="store_true", help="one log line per request (no query strings)"
    )


def with_environment(
    parser: argparse.ArgumentParser, argv: Sequence[str], environ: dict[str, str]
) -> list[str]:
    """``argv`` with ``RATEKEEPER_*`` values added for the options it does not give."""
    given = {token.split("=", 1)[0] for token in argv if token.startswith("--")}
    taken = set(given)
    for group in parser._mutually_exclusive_groups:
        if any(opt in given for action in group._group_actions for opt in action.option_strings):
            taken |= {opt for action in group._group_actions for opt in action.option_strings}
    extra: list[str] = []
    for action in parser._actions:
        options = [o for o in action.option_strings if o.startswith("--")]
        if not options or options[0] in ("--help", "--version") or options[0] in taken:
            continue
        option = options[0]
        names = (f"RATEKEEPER_{option[2:].upper().replace('-', '_')}", *_ALIASES.get(option, ()))
        value = next((environ[n] for n in names if n in environ), None)
        if value is None:
            continue
        if isinstance(action, argparse._StoreTrueAction):
            if value.strip().lower() in _TRUE:
                extra.append(option)
            elif value.strip().lower() not in _FALSE:
                parser.error(f"{names[0]}: expected 1/true/yes or 0/false/no, got {value!r}")
        elif isinstance(action, argparse._AppendAction):
            for item in value.replace(",", " ").split():
                extra += [option, item]
        else:
            extra += [option, value]
        for group in parser._mutually_exclusive_groups:
            if action in group._group_actions:
                taken |= {o for a in group._group_actions for o in a.option_strings}
    return [*argv, *extra]


def _host_port(spec: str) -> tuple[str, str]:
    host, _, port_text = spec.rpartition(":")
    host = host.strip("[]")
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise GatewayConfigError(
            f"--admin: expected HOST:PORT (e.g. 127.0.0.1:9090) or unix:PATH, got {spec!r}"
        )
    return host, port_text


def _bind_admin(spec: str) -> tuple[socket.socket, tuple[str, int | None]]:
    if spec.startswith("unix:"):
        path = Path(spec[len("unix:") :])
        if path.exists() and stat.S_ISSOCK(path.stat().st_mode):
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
        except OSError as exc:
            sock.close()
            raise GatewayConfigError(f"--admin {spec}: cannot listen: {exc.strerror}") from None
        os.chmod(path, 0o600)
        sock.listen(128)
        sock.set_inheritable(True)
        return sock, (str(path), None)
    host, port_text = _host_port(spec)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port_text)))
    except OSError as exc:
        sock.close()
        raise GatewayConfigError(f"--admin {spec}: cannot listen: {exc.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    bound = sock.getsockname()
    return sock, (str(bound[0]), int(bound[1]))


class OperatorRun:
    """The supervisor's operator side of one ``serve`` run: admin socket, run directory with
    the published policy, reload on SIGHUP and ``--watch``."""

    def __init__(self, args: argparse.Namespace, settings: ServeSettings) -> None:
        self.args = args
        self.sockets: list[socket.socket] = []
        self.admin_url: str | None = None
        token = os.environ.get(TOKEN_VARIABLE, "")
        admin_server = None
        if args.admin:
            if not args.admin.startswith("unix:"):
                _host_port(args.admin)  # a malformed address is named as such, first
            if admin_token_needed(args.admin) and not token:
                raise GatewayConfigError(
                    f"--admin {args.admin} is reachable from other machines: set "
                    f"{TOKEN_VARIABLE} (or listen on 127.0.0.1 or a unix socket)"
                )
            sock, admin_server = _bind_admin(args.admin)
            self.sockets.append(sock)
            host, port = admin_server
            self.admin_url = f"unix:{host}" if port is None else f"http://{_url_host(host)}:{port}"
        elif args.decision_endpoint:
            raise GatewayConfigError("--decision-endpoint goes with --admin")
        self.run_dir = tempfile.mkdtemp(prefix="ratekeeper-run-")
        self.channel = PolicyChannel(Path(self.run_dir))
        self.reloader = PolicyReloader(settings.policy_path, self.channel, settings.trusted_proxies)
        first = self.reloader.reload()
        if not first["reloaded"]:
            raise GatewayConfigError(first["error"] or "the policy could not be loaded")
        os.environ[OPERATOR_VARIABLE] = OperatorSettings(
            admin=args.admin,
            admin_server=admin_server,
            decision_endpoint=args.decision_endpoint,
            access_log=args.access_log,
            run_dir=self.run_dir,
        ).to_json()
        os.environ[SUPERVISOR_VARIABLE] = str(os.getpid())
        self._stop = threading.Event()

    def on_hup(self) -> None:
        """Reload the policy (SIGHUP), off the signal handler's thread."""
        threading.Thread(target=self.reloader.reload, name="ratekeeper-reload", daemon=True).start()

    def start(self, single_process: bool) -> None:
        """Install the SIGHUP handler (one process) and start watching the file (``--watch``)."""
        if single_process:
            signal.signal(signal.SIGHUP, lambda *_: self.on_hup())
        if self.args.watch:
            threading.Thread(target=self._watch, name="ratekeeper-watch", daemon=True).start()

    def _watch(self) -> None:
        import watchfiles  # noqa: PLC0415 (only with --watch)

        path = self.reloader.path.resolve()

        def ours(_change: Any, changed: str) -> bool:
            return Path(changed).name == path.name

        for _ in watchfiles.watch(
            path.parent, watch_filter=ours, stop_event=self._stop, debounce=300, step=50
        ):
            self.reloader.reload()

    def close(self) -> None:
        """Stop watching and remove the run directory."""
        self._stop.set()
        for sock in self.sockets:
            sock.close()
        if self.args.admin and self.args.admin.startswith("unix:"):
            Path(self.args.admin[len("unix:") :]).unlink(missing_ok=True)
        for child in Path(self.run_dir).iterdir():
            child.unlink(missing_ok=True)
        Path(self.run_dir).rmdir()


def operator_words(args: argparse.Namespace, admin_url: str | None) -> str:
    """The start-up line's words on the admin listener and the decision endpoint."""
    if admin_url is None:
        return "decisions at /_ratekeeper/decide, /healthz, /metrics on this port; no admin API"
    words = f"admin API, /metrics, /healthz on {admin_url}"
    if args.decision_endpoint:
        words += "; decisions at /_ratekeeper/decide"
    return words


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class ReloadingMultiprocess(Multiprocess):
    """uvicorn's supervisor, reloading the policy on SIGHUP instead of restarting workers."""

    def __init__(self, *args: Any, on_hup: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_hup = on_hup

    def handle_hup(self) -> None:
        """Reload the policy; the workers keep running and pick it up within a second."""
        self._on_hup()
