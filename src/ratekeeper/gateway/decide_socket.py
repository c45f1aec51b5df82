"""Where ``serve --decide-listen`` listens: the address given, the socket bound in ``serve``'s
supervisor, and how its workers find it (``DECIDE_VARIABLE`` in the environment).

One worker serves the supervisor's socket itself (the same process). With several, the
supervisor holds the TCP port without listening and each worker binds it again with
``SO_REUSEPORT``, so the kernel spreads connections over them; a Unix socket cannot be shared
that way and needs ``--workers 1``.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ratekeeper.errors import GatewayConfigError
from ratekeeper.gateway.connections import ConnectionLimits

__all__ = ["DECIDE_VARIABLE", "ListenAddress", "bind_decide_listener", "bound_socket"]

# Not RATEKEEPER_DECIDE_LISTEN: that one is --decide-listen given in the environment.
DECIDE_VARIABLE = "RATEKEEPER_DECIDE_SOCKET"


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """Where the listener listens: ``host`` and ``port``, or a Unix socket's ``path``."""

    host: str | None = None
    port: int | None = None
    path: str | None = None

    @classmethod
    def parse(cls, text: str) -> ListenAddress:
        """``HOST:PORT`` or ``unix:PATH``; anything else is a :class:`GatewayConfigError`."""
        if text.startswith("unix:"):
            if not text[len("unix:") :]:
                raise GatewayConfigError("--decide-listen unix: expected a socket path after unix:")
            return cls(path=text[len("unix:") :])
        host, _, port = text.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise GatewayConfigError(
                f"--decide-listen: expected HOST:PORT (e.g. 127.0.0.1:9001) or unix:PATH, "
                f"got {text!r}"
            )
        return cls(host=host, port=int(port))

    def words(self) -> str:
        """The address as the start-up line and nginx's ``server`` name it."""
        if self.path is not None:
            return f"unix:{self.path}"
        return (
            f"[{self.host}]:{self.port}" if ":" in (self.host or "") else f"{self.host}:{self.port}"
        )


def _tcp_socket(address: ListenAddress, shared: bool) -> socket.socket:
    host = address.host or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if shared:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, address.port or 0))
    except OSError as exc:
        sock.close()
        raise GatewayConfigError(
            f"--decide-listen {address.words()}: cannot listen: {exc.strerror or exc}"
        ) from None
    return sock


def _unix_socket(path: str) -> socket.socket:
    where = Path(path)
    if where.exists() and stat.S_ISSOCK(where.stat().st_mode):
        where.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise GatewayConfigError(
            f"--decide-listen unix:{path}: cannot listen: {exc.strerror}"
        ) from None
    # nginx runs as another user: it needs write access to connect (0o666, as with php-fpm's
    # socket); the directory the socket is in decides who may reach it.
    os.chmod(path, 0o666)
    return sock


# The socket bound by ``bind_decide_listener`` in this process: a single-worker serve's worker
# runs in the same process and takes it from here.
_BOUND: list[socket.socket] = []


def bind_decide_listener(
    text: str, workers: int, limits: ConnectionLimits
) -> tuple[socket.socket, ListenAddress]:
    """Bind the listener's socket in ``serve``'s supervisor and tell the workers where it is
    and its ``limits`` (in the environment); returns the socket and its address (the port
    ``:0`` got)."""
    address = ListenAddress.parse(text)
    if address.path is not None:
        if workers > 1:
            raise GatewayConfigError(
                "--decide-listen unix:PATH is served by one worker: use --workers 1, or "
                "HOST:PORT, which every worker serves"
            )
        sock = _unix_socket(address.path)
    else:
        sock = _tcp_socket(address, shared=workers > 1)
        host, port = sock.getsockname()[:2]
        address = ListenAddress(host=str(host), port=int(port))
    if workers == 1:
        sock.listen(1024)
    # With several workers the supervisor holds the port without listening: connections go only
    # to the workers' sockets, each bound to the same port.
    _BOUND[:] = [sock]
    os.environ[DECIDE_VARIABLE] = json.dumps(
        {
            "host": address.host,
            "port": address.port,
            "path": address.path,
            "pid": os.getpid(),
            "limits": [limits.max_connections, limits.header_timeout_s, limits.max_header_bytes],
        }
    )
    return sock, address


def bound_socket() -> tuple[socket.socket, ConnectionLimits] | None:
    """In a ``serve`` worker: the listening socket to serve and the connection limits, when
    ``--decide-listen`` was given."""
    text = os.environ.get(DECIDE_VARIABLE)
    if not text:
        return None
    data: dict[str, Any] = json.loads(text)
    limits = ConnectionLimits(*data["limits"])
    if data["pid"] == os.getpid() and _BOUND:
        return _BOUND[0], limits
    address = ListenAddress(host=data["host"], port=data["port"], path=data["path"])
    sock = _tcp_socket(address, shared=True)
    sock.listen(1024)
    return sock, limits
