"""Generated requests (hypothesis) thrown at the real gateway and at both middlewares over real
sockets: methods, paths with dot segments and percent escapes, header names, values and raw
bytes, repeated headers, bodies. Whatever comes in, ratekeeper answers: never a 5xx of its own,
never a crash or a hang; every answer is either decided (rate-limit headers) or a 4xx with a body
saying what was wrong.

Bounded for CI (a fixed number of examples, derandomized); ``RATEKEEPER_FUZZ_EXAMPLES=5000``
runs a longer hunt with fresh randomness."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway_servers import Process, serve
from test_http_support import serve as serve_middleware

_LONG = int(os.environ.get("RATEKEEPER_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=_LONG or 300,
    deadline=None,
    derandomize=not _LONG,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

POLICY = """
body = "musique"
usage_path = "/api/usage"
apply = ["caller"]
ietf_headers = true
zone_header = true

[identity]
source = "api_key"
key_headers = ["X-API-Key", "Authorization"]
anonymous = "ip"
trusted_proxies = ["127.0.0.1"]

[limits.caller]
rates = "40/minute"
algorithm = "first_hit_window"

[limits.auth]
rates = "5/minute"
scope = "ip"

[lockout]
failures = 3
window = "15 minutes"
duration = "15 minutes"
scope = "ip"
routes = ["/api/v1/auth/*"]

[[rules]]
routes = ["/api/v1/auth/*"]
limits = ["auth"]

[[rules]]
routes = ["/api/v1/items/{id}"]
methods = ["POST", "PUT", "DELETE"]
cost = 2
"""

_TOKEN = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_NAMES = [
    "X-API-Key",
    "x-api-key",
    "Authorization",
    "X-Forwarded-For",
    "Forwarded",
    "X-Real-IP",
    "User-Agent",
    "Cookie",
    "Accept",
    "X-Original-URI",
    "X-Original-Method",
    "X-Original-Status",
    "X-Forwarded-Uri",
    "X-Forwarded-Method",
    "X-Ratekeeper-Deny-Status",
    "X-Ratekeeper-Status",
    "Host",
]
_VALUES = [
    b"key-1",
    b"key-2",
    b"Bearer key-1",
    b"bearer  key-2",
    b"Basic a2V5",
    b"127.0.0.1",
    b"10.0.0.1, 127.0.0.1",
    b"for=10.1.2.3",
    b'for="[::1]:80";proto=http, for=unknown',
    b"for=_hidden, for=127.0.0.1",
    b"2001:db8::1",
    b"/api/v1/auth/login",
    b"/api/v1/x/../auth/login",
    b"/../../etc",
    b"401",
    b"403",
    b"429",
    b"\xd9\xa4\xd9\xa0\xd9\xa3",
    # Superscript digits as servers read header bytes (latin-1): str.isdigit says yes.
    b"\xb2\xb3\xb9",
    b"4\xb20",
    b"9" * 400,
    b"",
]
_SEGMENTS = [
    "api",
    "v1",
    "auth",
    "login",
    "items",
    "1",
    "usage",
    "x",
    "",
    ".",
    "..",
    "%2e",
    "%2E%2e",
    "%2f",
    "%2F..",
    "%00",
    "%ff",
    "%",
    "%zz",
    "%C3%BC",
    "_ratekeeper",
    "decide",
    "report",
    "healthz",
    "a;b=c",
    "~",
]

# The endpoints with most to get wrong, as whole paths: random segments seldom spell them.
_ENDPOINTS = [
    "/_ratekeeper/decide",
    "/_ratekeeper/report",
    "/_ratekeeper/decide/api/v1/auth/login",
    "/api/v1/auth/login",
    "/api/v1/items/7",
    "/api/usage",
    # Request targets that are not origin-form paths.
    "*",
    "http://fuzz.example/api/v1/auth/login",
]

names = st.sampled_from(_NAMES) | st.text(_TOKEN, min_size=1, max_size=20)
raw_values = st.binary(max_size=60).map(
    lambda b: bytes(c for c in b if c == 9 or 0x20 <= c != 0x7F).strip(b" \t")
)
values = st.sampled_from(_VALUES) | raw_values
_STATUSES = [b"401", b"403", b"200", b"\xb2\xb3\xb9", b"4\xb20", b"9" * 400, b"0403", b"600", b""]
# Each header with values of its own kind: random values seldom make a status or an address.
_OWN_VALUES = {
    "X-Original-Status": _STATUSES,
    "X-Ratekeeper-Deny-Status": _STATUSES,
    "X-Ratekeeper-Status": _STATUSES,
    "X-Original-URI": [v for v in _VALUES if v.startswith(b"/")] + [b"/_ratekeeper/decide"],
    "X-Forwarded-Uri": [v for v in _VALUES if v.startswith(b"/")],
}
pairs = st.tuples(names, values) | st.sampled_from(_NAMES).flatmap(
    lambda name: st.tuples(st.just(name), st.sampled_from(_OWN_VALUES.get(name, _VALUES)))
)
headers = st.lists(pairs, max_size=8).flatmap(
    # Repeat some of them: the second copy of a header is where ambiguity starts.
    lambda hs: (
        st.lists(st.sampled_from(hs), max_size=3).map(lambda extra: hs + extra)
        if hs
        else st.just(hs)
    )
)
paths = st.sampled_from(_ENDPOINTS) | st.lists(
    st.sampled_from(_SEGMENTS), min_size=1, max_size=7
).map(lambda parts: "/" + "/".join(parts))
queries = st.sampled_from(["", "?a=1", "?key=%00", "?x=..%2f", "?a=1&a=2&fmt=json"])
methods = st.sampled_from(
    ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "PROPFIND"]
) | st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ-_", min_size=1, max_size=12)
bodies = st.binary(max_size=300)

# What a proxy adds when it asks the decision endpoint, each present or not.
_PROXY_FIELDS = [
    ("X-Original-URI", _OWN_VALUES["X-Original-URI"]),
    ("X-Original-Method", [b"GET", b"POST", b"post", b"", b"G\xe9T"]),
    ("X-Ratekeeper-Deny-Status", _STATUSES),
    ("X-Original-Status", _STATUSES),
    ("X-Ratekeeper-Status", [b"429", b""]),
]


@st.composite
def header_lists(draw: st.DrawFn, path: str) -> list[tuple[str, bytes]]:
    """Headers for a request to ``path``: the proxy's own when it is a ratekeeper endpoint."""
    fields = list(draw(headers))
    if path.startswith("/_ratekeeper/"):
        for name, choices in _PROXY_FIELDS:
            value = draw(st.none() | st.sampled_from(choices))
            if value is not None:
                fields.append((name, value))
    return draw(st.permutations(fields))


# Headers the fuzz does not touch: they frame the request, and a wrong frame is a wait for bytes
# that never come, not a ratekeeper question.
_FRAMING = {"content-length", "transfer-encoding", "connection", "expect", "upgrade", "te"}


def raw_exchange(url: str, request: bytes) -> bytes:
    """Send ``request``, read the whole answer (the request asks to close)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:
                raise AssertionError(f"no complete answer within 10 s to {request!r}") from None
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def build(
    method: str, target: str, fields: list[tuple[str, bytes]], body: bytes, host: bytes
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1".encode(), b"Host: " + host]
    for name, value in fields:
        if name.lower() in _FRAMING or name.lower() == "host":
            continue
        lines.append(name.encode() + b": " + value)
    if body:
        lines.append(b"Content-Length: %d" % len(body))
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def check(answer: bytes, request: bytes, *, decided_paths: bool) -> None:
    """The properties every answer must have (see the module docstring)."""
    assert answer.startswith(b"HTTP/1."), f"no answer to {request!r}: {answer!r}"
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert status < 500, f"{status} to {request!r}: {answer!r}"
    lower = head.lower()
    if 400 <= status < 500:
        method = request.split(b" ", 1)[0]
        # Asked to (X-Ratekeeper-Deny-Status), the decision endpoint carries the refusal in
        # headers for nginx, with an empty body.
        said = body or method == b"HEAD" or b"\r\nx-ratekeeper-status:" in lower
        assert said, f"{status} without a reason to {request!r}: {answer!r}"
    elif status < 300 and decided_paths:
        assert b"\r\nx-ratelimit-limit:" in lower, f"undecided {status} to {request!r}: {head!r}"


class EchoUpstream:
    """A raw-socket upstream that answers 200 to anything (the request head as the body)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head = data.split(b"\r\n\r\n", 1)[0]
                body = b"" if head.startswith(b"HEAD ") else head
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(head), body)
                )
            except OSError:
                return


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    root: Path = tmp_path_factory.mktemp("fuzz")
    (root / "policy.toml").write_text(POLICY)
    upstream = EchoUpstream()
    with serve(
        "--config",
        str(root / "policy.toml"),
        "--upstream",
        upstream.url,
        "--store",
        f"sqlite:///{root / 'fuzz.db'}",
        cwd=root,
    ) as process:
        yield process
    upstream.sock.close()
    output = process.output()
    assert "Traceback" not in output, output


@FUZZ
@given(method=methods, path=paths, query=queries, body=bodies, data=st.data())
def test_the_gateway_answers_anything_without_a_5xx(
    gateway: Process, method: str, path: str, query: str, body: bytes, data: st.DataObject
) -> None:
    fields = data.draw(header_lists(path), label="headers")
    request = build(method, path + query, fields, body, b"fuzz.example")
    answer = raw_exchange(gateway.url, request)
    # Its own endpoints answer undecided by design: health, metrics, reports.
    own = path.startswith(("/healthz", "/metrics", "/_ratekeeper/report"))
    check(answer, request, decided_paths=not own)


def test_limits_still_hold_after_the_fuzz(gateway: Process) -> None:
    # Whatever the fuzz sent, a fresh caller gets its 40 a minute, not one more.
    request = build("GET", "/api/v1/items/7", [("X-API-Key", b"after-the-fuzz")], b"", b"x")
    statuses = []
    for _ in range(45):
        answer = raw_exchange(gateway.url, request)
        statuses.append(int(answer.split(b" ", 2)[1]))
    assert statuses == [200] * 40 + [429] * 5


@pytest.fixture(scope="module", params=["asgi", "wsgi"])
def middleware(request: pytest.FixtureRequest) -> Iterator[str]:
    with serve_middleware(str(request.param), POLICY) as running:
        yield running.url


@FUZZ
@given(method=methods, path=paths, query=queries, body=bodies, data=st.data())
def test_the_middlewares_answer_anything_without_a_5xx(
    middleware: str, method: str, path: str, query: str, body: bytes, data: st.DataObject
) -> None:
    fields = data.draw(header_lists(path), label="headers")
    request = build(method, path + query, fields, body, b"fuzz.example")
    answer = raw_exchange(middleware, request)
    # /metrics is the test app's own endpoint; the framework may refuse a method it does not
    # route (405) after the limiter decided, or a request it cannot parse (400) before.
    check(answer, request, decided_paths=not path.startswith("/metrics"))
