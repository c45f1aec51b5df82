"""``ratekeeper serve``: arguments, the start-up line, and uvicorn with one or more workers.

The listening socket is bound before the start-up line is printed, so the line is true when it
appears (and ``--port 0`` reports the port it got). uvicorn runs with ``proxy_headers=False``:
who the caller is must never depend on uvicorn trusting ``X-Forwarded-For`` from 127.0.0.1,
only on the policy's trusted proxies. SIGINT/SIGTERM stop accepting, let requests in flight
finish (up to ``--graceful-timeout``), then close the upstream pool and the store. With
``--workers`` above 1, ``/metrics`` sums every worker's counts (``ratekeeper.gateway.metrics``).
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import logging
import os
import shutil
import socket
import sys
import tempfile
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from ratekeeper.errors import RatekeeperError
from ratekeeper.gateway.app import (
    DEFAULT_STORE,
    ENVIRONMENT_VARIABLE,
    ServeSettings,
    build_gateway,
)
from ratekeeper.gateway.connections import (
    ConnectionLimits,
    GatewayConfig,
    GuardedH11Protocol,
    GuardedHttpToolsProtocol,
    connection_cap,
)
from ratekeeper.gateway.decide import DECIDE_PATH
from ratekeeper.gateway.decide_socket import DECIDE_VARIABLE, bind_decide_listener
from ratekeeper.gateway.demo import try_paths
from ratekeeper.gateway.logs import configure_logging
from ratekeeper.gateway.metrics import MULTIPROCESS_VARIABLE, multiprocess_dir
from ratekeeper.gateway.serve_operator import (
    OperatorRun,
    ReloadingMultiprocess,
    add_operator_arguments,
    operator_words,
    with_environment,
)
from ratekeeper.policy.schema import Policy
from ratekeeper.stores.base import Store
from ratekeeper.stores.url import mask_url

__all__ = ["describe_policy", "event_loop_and_parser", "run_app", "serve_main"]

_SCOPE_WORDS = {
    "api_key": "API key",
    "key": "API key",
    "account": "account",
    "ip": "IP",
    "ip_ua": "IP + User-Agent",
    "global": "whole service",
    "callable": "caller",
}


def describe_policy(policy: Policy) -> str:
    """What a policy enforces, in one line: each limit's rates and what it counts per."""
    parts = []
    for name, spec in policy.limits.items():
        per = _SCOPE_WORDS.get(policy.identity.source if spec.scope == "caller" else spec.scope)
        if spec.limit_set is None:
            text = f"{name} {spec.in_flight} in flight"
        else:
            limits = spec.limit_set.limits
            rates = " + ".join(str(limit.rate) for limit in limits)
            text = f"{name} {rates} per {per}, {limits[0].algorithm.value.replace('_', ' ')}"
        if spec.status != 429:
            text += f" -> {spec.status}"
        if spec.shadow or policy.shadow:
            text += " [shadow]"
        parts.append(text)
    extras = []
    if policy.tiers.plans:
        extras.append("plans " + "/".join(policy.tiers.plans))
    if policy.lockout is not None:
        lock = policy.lockout
        extras.append(f"lockout after {lock.failures} failures in {lock.window_s:g}s")
    if policy.usage_path:
        extras.append(f"usage at {policy.usage_path}")
    if policy.keys.declared:
        extras.append(f"{len(policy.keys.known)} known keys, unknown keys: {policy.keys.unknown}")
    elif policy.identity.source != "ip":
        # Said at start so that a budget per made-up key is never a silent default.
        extras.append("no [keys]: every API key gets its own budget (unknown = own)")
    if policy.user_agent_required:
        extras.append("User-Agent required")
    return "; ".join([*parts, *extras])


def _store_words(url: str) -> str:
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :].split("?", 1)[0])
        return f"SQLite {path.resolve()}"
    return mask_url(url)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it each answer's second write waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def event_loop_and_parser() -> tuple[str, str]:
    """uvicorn's ``loop`` and ``http``: uvloop and httptools when installed (the http extra
    has them), asyncio and h11 otherwise.

    Measured side by side on this project's loaded 2-core machines (wrk, two ``serve``
    processes in one run), uvloop + httptools answered 1.4-2x the requests per second of
    asyncio + h11 on the proxy, rejection and decision-endpoint paths in most runs.
    """
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return loop, http


def _uvicorn_config(
    app: Any, workers: int, log_level: str, graceful_s: float, limits: ConnectionLimits
) -> uvicorn.Config:
    loop, http = event_loop_and_parser()
    return GatewayConfig(
        app,
        limits=limits,
        factory=isinstance(app, str),
        loop=loop,
        http=GuardedHttpToolsProtocol if http == "httptools" else GuardedH11Protocol,
        h11_max_incomplete_event_size=limits.max_header_bytes,
        workers=workers,
        proxy_headers=False,
        server_header=False,
        access_log=False,
        log_level=log_level,
        timeout_graceful_shutdown=max(1, round(graceful_s)),
        lifespan="on",
    )


def run_app(
    app: Any,
    host: str,
    port: int,
    describe: Callable[[str], str],
    *,
    workers: int = 1,
    log_level: str = "warning",
    graceful_s: float = 30.0,
    limits: ConnectionLimits | None = None,
    operator: OperatorRun | None = None,
) -> int:
    """Bind, print ``describe(url)``, serve ``app`` (an app or a factory's import string)
    until SIGINT/SIGTERM, each worker within ``limits`` (see ``gateway.connections``);
    ``operator`` adds the admin listener and reloads the policy on SIGHUP."""
    try:
        sock = _bind(host, port)
    except OSError as exc:
        print(f"ratekeeper: {exc}", file=sys.stderr)
        return 1
    limits = limits or ConnectionLimits()
    cap = connection_cap(limits.max_connections)
    if cap < limits.max_connections:
        logging.getLogger("ratekeeper.gateway").warning(
            "at most %d connections per worker: the file limit (ulimit -n) leaves no room for %d",
            cap,
            limits.max_connections,
        )
        limits = replace(limits, max_connections=cap)
    config = _uvicorn_config(app, workers, log_level, graceful_s, limits)
    print(describe(_url(sock)), flush=True)
    sockets = [sock, *(operator.sockets if operator else ())]
    if operator is not None:
        operator.start(single_process=workers == 1)
    if workers > 1 and operator is not None:
        ReloadingMultiprocess(config, sockets=sockets, on_hup=operator.on_hup).run()
    elif workers > 1:
        Multiprocess(config, sockets=sockets).run()
    else:
        uvicorn.Server(config).run(sockets=sockets)
    return 0


def _network(text: str) -> str:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an IP address or CIDR network such as 127.0.0.1 or 10.0.0.0/8, got {text!r}"
        ) from None
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ratekeeper serve",
        description=(
            "Enforce a policy's rate limits in front of an HTTP API (a streaming reverse "
            "proxy), or in front of a built-in demo API when no --upstream is given. Also "
            f"answers {DECIDE_PATH} for nginx auth_request, Traefik ForwardAuth and Envoy "
            "ext_authz, /healthz and /metrics."
        ),
    )
    policy = parser.add_mutually_exclusive_group(required=True)
    policy.add_argument(
        "--preset", help="a shipped policy: musique, beatpass, radio, musicbrainz, aisoule"
    )
    policy.add_argument("--config", metavar="FILE", help="a policy TOML file")
    parser.add_argument(
        "--upstream", metavar="URL", help="the API to forward to (default: the demo API)"
    )
    parser.add_argument(
        "--store",
        metavar="URL",
        help=f"where counters live (default: the policy's store if it names one, else "
        f"{DEFAULT_STORE}, a file in the current directory); redis://host:6379/0 for several "
        "machines",
    )
    parser.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="default: 8080; 0 picks a free one")
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes sharing the store (default: 1)"
    )
    parser.add_argument(
        "--trust-proxy",
        action="append",
        default=[],
        type=_network,
        metavar="CIDR",
        help="a proxy in front (e.g. nginx on 127.0.0.1) whose X-Forwarded-For (or the "
        "policy's identity.client_ip_header) names the client, read from the right; no other "
        "forwarding header is believed; repeatable; added to identity.trusted_proxies",
    )
    parser.add_argument(
        "--decide-listen",
        metavar="HOST:PORT|unix:PATH",
        help=f"also answer {DECIDE_PATH} and /report on a lean listener of their own (no "
        "uvicorn/ASGI: a quarter to a half less CPU per decision), for nginx auth_request; "
        "the same limits, resets and reloads as the traffic port",
    )
    _add_time_and_connection_arguments(parser)
    parser.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    add_operator_arguments(parser)
    return parser


def _add_time_and_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the upstream's answer before 504 (default: 30)",
    )
    parser.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on shutdown, how long requests in flight may take to finish (default: 30)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=ConnectionLimits().max_connections,
        metavar="N",
        help="open client connections per worker; above it the longest-idle one is closed, or "
        "the newcomer answered 503 when all are busy (default: %(default)s, lowered to fit "
        "the file limit)",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=ConnectionLimits().header_timeout_s,
        metavar="SECONDS",
        help="how long a client may take to send a request's head before its connection is "
        "closed; a request body then gets as long before it must average 500 bytes/s "
        "(default: %(default)s)",
    )


def _store_of(args: argparse.Namespace, settings: ServeSettings) -> str:
    if args.store:
        return str(args.store)
    # A policy file that names a store keeps it; the schema's default (memory://) does not
    # survive restarts or span workers, so serve falls back to the SQLite file instead.
    try:
        data = tomllib.loads(settings.policy_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return DEFAULT_STORE
    store = data.get("store")
    return store if isinstance(store, str) and store else DEFAULT_STORE


def _check_numbers(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.workers < 1:
        parser.error(f"--workers must be 1 or more, got {args.workers}")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be between 0 and 65535, got {args.port}")
    if args.timeout <= 0:
        parser.error(f"--timeout must be above 0 seconds, got {args.timeout}")
    if args.max_connections < 1:
        parser.error(f"--max-connections must be 1 or more, got {args.max_connections}")
    if not args.header_timeout > 0:
        parser.error(f"--header-timeout must be above 0 seconds, got {args.header_timeout}")


def _start_line(
    args: argparse.Namespace,
    settings: ServeSettings,
    policy: Policy,
    operator: OperatorRun,
    lean: str | None = None,
) -> Callable[[str], str]:
    """The start-up line, given the URL the socket got."""
    what = f"preset {args.preset}" if args.preset else f"policy {args.config}"
    target = f"upstream {settings.upstream}" if settings.upstream else "demo API"
    hints = try_paths(settings.demo_names) if not settings.upstream else []
    workers = f"{args.workers} worker{'s' if args.workers > 1 else ''}"

    def describe(url: str) -> str:
        line = (
            f"ratekeeper serve: {what}: {describe_policy(policy)} | store "
            f"{_store_words(settings.store)} | {target} | listening on {url} ({workers}; "
            f"{operator_words(args, operator.admin_url)})"
        )
        if lean is not None:
            line += f"\n  lean decisions: {DECIDE_PATH} on {lean}"
        for options, path in hints[:1]:
            line += f"\n  try: curl -i {options} {url}{path}"
        return line

    return describe


def serve_main(argv: Sequence[str] | None = None) -> int:
    """The ``ratekeeper serve`` command; returns the exit status."""
    parser = _parser()
    given = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(with_environment(parser, given, dict(os.environ)))
    _check_numbers(parser, args)
    configure_logging(args.log_level, args.log_format)
    settings = ServeSettings(
        preset=args.preset,
        config=args.config,
        upstream=args.upstream,
        trusted_proxies=tuple(args.trust_proxy),
        timeout_s=args.timeout,
    )
    try:
        settings = replace(settings, store=_store_of(args, settings))
        if args.workers > 1 and settings.store.startswith("memory://"):
            parser.error(
                "--workers > 1 needs a shared store: memory:// counts per process; use "
                f"{DEFAULT_STORE} or redis://"
            )
        # Build once here so a bad policy, store or upstream fails now, with its message,
        # rather than inside every worker.
        gateway = build_gateway(settings)
        policy = gateway.enforcer.plan.policy
        store = gateway.enforcer.store
        if isinstance(store, Store):
            store.close()
        lean = None
        if args.decide_listen:
            limits = ConnectionLimits(
                max_connections=connection_cap(args.max_connections),
                header_timeout_s=args.header_timeout,
            )
            lean_socket, address = bind_decide_listener(args.decide_listen, args.workers, limits)
            lean = address.words()
        operator = OperatorRun(args, settings)
    except RatekeeperError as exc:
        print(f"ratekeeper serve: {exc}", file=sys.stderr)
        return 2
    os.environ[ENVIRONMENT_VARIABLE] = settings.to_json()
    describe = _start_line(args, settings, policy, operator, lean)
    made = None
    if args.workers > 1 and multiprocess_dir() is None:
        # Before the workers start: prometheus-client picks its mode when first imported.
        made = os.environ[MULTIPROCESS_VARIABLE] = tempfile.mkdtemp(prefix="ratekeeper-metrics-")
    try:
        return run_app(
            "ratekeeper.gateway.operating:app_from_environment",
            args.host,
            args.port,
            describe,
            workers=args.workers,
            log_level=args.log_level,
            graceful_s=args.graceful_timeout,
            limits=ConnectionLimits(
                max_connections=args.max_connections, header_timeout_s=args.header_timeout
            ),
            operator=operator,
        )
    finally:
        operator.close()
        if lean is not None:
            lean_socket.close()
            os.environ.pop(DECIDE_VARIABLE, None)
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
