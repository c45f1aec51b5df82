"""The decision endpoint: the proxy in front forwards, ratekeeper only decides.

Each proxy asks in its own way, and all three are understood:

- nginx ``auth_request``: a subrequest to ``/_ratekeeper/decide`` carrying the original
  request's headers plus ``X-Original-URI`` and ``X-Original-Method`` (set in the config).
- Traefik ForwardAuth: a request to ``/_ratekeeper/decide`` with ``X-Forwarded-Uri`` and
  ``X-Forwarded-Method``.
- Envoy HTTP ext_authz: the original method, with the original path appended to the
  configured ``path_prefix`` (``/_ratekeeper/decide/v1/status?x=1``).

The answer is 200 with the rate-limit headers to pass on when the request may go ahead, or the
refusal itself (429 or 503, with ``Retry-After``, the headers and the policy's body), which
Traefik and Envoy return to the client as is. nginx's ``auth_request`` understands only 2xx,
401 and 403, so a request carrying ``X-Ratekeeper-Deny-Status: 403`` gets its refusals as that
status, with the real one in ``X-Ratekeeper-Status``, the body in ``X-Ratekeeper-Body`` for the
configuration to answer with (``examples/nginx/ratekeeper.conf``) and an empty body of its own,
so that nginx keeps its keepalive connection to ratekeeper.

The original path is matched as ``serve`` matches a request's (``ratekeeper.gateway.paths``):
percent-decoded, dot segments removed, slashes merged, so ``/api/v1/x/../auth/login`` is the
login that the upstream will serve; a path servers could read as different resources is
refused with 400 (carried as ``X-Ratekeeper-Status`` when a deny status is asked for), and so
is a request described in two ways (``X-Original-URI`` beside a different ``X-Forwarded-Uri``,
the methods alike, or one of them repeated): a proxy sets its own form and passes the client's
headers on, so the client could otherwise choose the route that is decided.

The caller's address is the peer's (the proxy) unless the policy trusts it as a proxy
(``identity.trusted_proxies`` or ``serve --trust-proxy``): then ``X-Forwarded-For`` decides.

What a decision cannot know is how the request ends. A policy's lockout counts failed answers
(401/403 from the API): the proxy reports each answer's status to ``/_ratekeeper/report`` with
the same description of the request plus ``X-Original-Status`` (nginx: ``post_action``, only in
the locations of the lockout's routes; see the example), and the lockout is then enforced as in
``serve`` mode. Traefik and Envoy have no such hook: lockout needs ``serve`` there. In-flight
limits (requests inside the API at once) are not enforced through the decision endpoint with
any proxy: a slot would have to be held from the decision until a report that may never come
(and may reach another worker process), so the decision releases it at once; use ``serve`` or
the proxy's own connection limit (nginx ``limit_conn``).

A report can only count failures against the caller that its request identifies, exactly as
a request through ``serve`` would, so a client that reaches the endpoint directly can lock out
no one but itself.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any
from urllib.parse import urlsplit

from ratekeeper.gateway.paths import PATH_REFUSAL, normal_path
from ratekeeper.gateway.proxy import error_answer
from ratekeeper.http.asgi_scope import Descriptions, Send
from ratekeeper.http.engine import Enforcer
from ratekeeper.http.flow import Answer
from ratekeeper.http.identity import RequestView

__all__ = ["DECIDE_PATH", "REPORT_PATH", "Verdict", "decide", "report", "report_verdict", "verdict"]

DECIDE_PATH = "/_ratekeeper/decide"
REPORT_PATH = "/_ratekeeper/report"
_PREFIX = DECIDE_PATH + "/"
_ORIGINAL = {
    "x-original-uri": 0,
    "x-forwarded-uri": 1,
    "x-original-method": 2,
    "x-forwarded-method": 3,
    "x-ratekeeper-deny-status": 4,
    "x-original-status": 5,
    "x-ratekeeper-status": 6,
}
_ORIGINAL_BYTES = {name.encode(): slot for name, slot in _ORIGINAL.items()}
_WANTED_BYTES: dict[frozenset[str], frozenset[bytes]] = {}
# What a decision request is answered: status, headers (its length among them) and body, the
# same for every front end (the ASGI endpoint here, the lean listener of ``decide_listener``).
Verdict = tuple[int, list[tuple[bytes, bytes]], bytes]


# Refusals answered again as they were (the over-limit cache's): id -> (answer, deny status,
# the verdict), the answer kept alive so that its id is not reused meanwhile; the verdict is the
# same object each time, so that a front end can keep its encoding (servers only read it).
_SENT: dict[int, tuple[Answer, int | None, Verdict]] = {}
_SENT_MAX = 512
_PRINTABLE = bytes(range(0x20, 0x7F))
_TWICE = (
    "ambiguous_request",
    "The request is described in two ways (X-Original-URI and X-Forwarded-Uri, "
    "X-Original-Method and X-Forwarded-Method, or one of them repeated); send one.",
)


# The names of the headers an allowed decision passes on, encoded once (None: not passed on).
_PASSED: dict[str, bytes | None] = {}


def _passed(name: str) -> bytes | None:
    # Lower-case, as uvicorn sends them: every front end's answer is then the same bytes.
    lowered = name.lower()
    encoded = None if lowered in ("content-type", "content-length") else lowered.encode("latin-1")
    if len(_PASSED) < 256:
        _PASSED[name] = encoded
    return encoded


def _wanted_bytes(wanted: frozenset[str] | None) -> frozenset[bytes] | None:
    if wanted is None:
        return None
    names = _WANTED_BYTES.get(wanted)
    if names is None:
        names = _WANTED_BYTES[wanted] = frozenset(n.encode("latin-1") for n in wanted)
    return names


def _status(text: str | None, low: int) -> int | None:
    """A status code from a header: three ASCII digits from ``low`` to 599, else ``None``.

    ``str.isdigit`` alone would let in digits ``int`` refuses (superscripts) or reads
    (other scripts' digits), and numbers of any length.
    """
    if text is None or len(text) != 3 or not text.isascii() or not text.isdigit():
        return None
    status = int(text)
    return status if low <= status <= 599 else None


def _view(
    scope: MutableMapping[str, Any], wanted: frozenset[str] | None
) -> tuple[RequestView | tuple[str, str], list[str | None]]:
    """The original request as the proxy describes it, or the code and message of a refusal
    (a path servers read differently, a request described two ways); and the values of
    ``_ORIGINAL``."""
    found: list[str | None] = [None] * len(_ORIGINAL)
    headers: dict[str, str] = {}
    twice = False
    names = _wanted_bytes(wanted)
    for raw_name, raw_value in scope["headers"]:
        # Names compared as bytes, lowercased (ASGI servers send them so): only the headers
        # kept are decoded.
        lowered = raw_name.lower()
        slot = _ORIGINAL_BYTES.get(lowered)
        if slot is not None:
            value = raw_value.decode("latin-1")
            twice = twice or (found[slot] is not None and found[slot] != value)
            found[slot] = value
            continue
        if names is not None and lowered not in names:
            continue
        name = lowered.decode("latin-1")
        value = raw_value.decode("latin-1")
        previous = headers.get(name)
        headers[name] = value if previous is None else f"{previous}, {value}"
    method: str = scope["method"]
    query = scope.get("query_string", b"").decode("latin-1")
    if scope["path"].startswith(_PREFIX):
        raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        raw = raw[len(DECIDE_PATH) :]
    else:
        # Each proxy names the request in its own headers, and passes the client's others on: a
        # client adding the other form must not choose what is decided.
        if twice or _differ(found[0], found[1]) or _differ(found[2], found[3], str.upper):
            return _TWICE, found
        uri = found[0] or found[1] or "/"
        if uri[:8].lower().startswith(("http://", "https://")):
            # The absolute form a client may send (and nginx's $request_uri keeps): its path.
            parts = urlsplit(uri)
            uri = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        text, _, query = uri.partition("?")
        raw = text.encode("latin-1")
        method = found[2] or found[3] or method
    # The path the upstream will serve, as serve mode matches it: decoded, dot segments removed.
    normal = normal_path(raw or b"/")
    if normal is None:
        return ("ambiguous_path", PATH_REFUSAL), found
    path = normal[1]
    client = scope.get("client")
    view = RequestView(method.upper(), path, headers, client[0] if client else None, query)
    return view, found


def _description(
    scope: MutableMapping[str, Any], wanted: frozenset[str] | None
) -> tuple[RequestView | tuple[str, str], int | None]:
    """``_view`` and the deny status asked for."""
    view, found = _view(scope, wanted)
    return view, _status(found[4], 400)


# Decision requests repeat: what a request describes is kept by the values it is made of.
_described = Descriptions(_description, also=_ORIGINAL_BYTES).describe


def _differ(first: str | None, second: str | None, key: Any = str) -> bool:
    return first is not None and second is not None and key(first) != key(second)


def _refusal(refusal: tuple[str, str], deny_as: int | None) -> Verdict:
    headers, body = error_answer(400, *refusal)
    status = 400
    if deny_as is not None:
        headers += [(b"x-ratekeeper-status", b"400"), (b"x-ratekeeper-body", body)]
        headers = [(n, b"0" if n == b"content-length" else v) for n, v in headers]
        status, body = deny_as, b""
    return status, headers, body


async def verdict(
    enforcer: Enforcer, scope: MutableMapping[str, Any], wanted: frozenset[str] | None
) -> Verdict:
    """What one decision request is answered (see the module docstring). ``scope`` is the
    request as ASGI describes it (header names lower-case). With an enforcer that decides on
    the event loop (``Enforcer.decides_on_loop``) the coroutine never suspends."""
    (view, deny_as), kept = _described(scope, wanted)
    if not isinstance(view, RequestView):
        return _refusal(view, deny_as)
    # A request seen before whose key is still over its limit: refused again at once.
    ticket = enforcer.repeated(view) if kept else None
    if ticket is None:
        ticket = await enforcer.admit_async(view, remember=kept)
        if ticket.held or ticket.lock_key is not None:
            # No answer will be reported back: release what admission holds at once.
            await enforcer.complete_async(ticket, 200)
    answer = ticket.answer
    if answer is None or answer.status < 300:
        headers = ticket.headers if answer is None else answer.headers
        names = _PASSED
        out = []
        for n, v in headers:
            name = names.get(n, b"")
            if name == b"":
                name = _passed(n)
            if name is not None:
                out.append((name, v.encode("latin-1")))
        out.append((b"content-length", b"0"))
        return 200, out, b""
    sent = _SENT.get(id(answer))
    if sent is not None and sent[0] is answer and sent[1] == deny_as:
        return sent[2]
    status = answer.status
    out = [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in answer.headers]
    body = answer.body
    if deny_as is not None:
        out.append((b"x-ratekeeper-status", str(status).encode()))
        text = body.strip()
        if not text.translate(None, _PRINTABLE):
            out.append((b"x-ratekeeper-body", text))
        status = deny_as
        # nginx discards an auth_request answer's body without reading it, and closes the
        # keepalive connection unless the body is empty: the refusal travels in the header.
        body = b""
    out.append((b"content-length", str(len(body)).encode()))
    if len(_SENT) >= _SENT_MAX:
        _SENT.clear()
    found = _SENT[id(answer)] = (answer, deny_as, (status, out, body))
    return found[2]


async def _send(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def decide(
    enforcer: Enforcer,
    scope: MutableMapping[str, Any],
    send: Send,
    wanted: frozenset[str] | None,
) -> None:
    """Answer one decision request on ASGI (see the module docstring)."""
    status, headers, body = await verdict(enforcer, scope, wanted)
    await _send(send, status, headers, body)


async def report_verdict(
    enforcer: Enforcer, scope: MutableMapping[str, Any], wanted: frozenset[str] | None
) -> Verdict:
    """Count a finished answer's status against the policy's lockout: 204, or 400 when
    ``X-Original-Status`` is missing (see the module docstring)."""
    view, found = _view(scope, wanted)
    status = _status(found[5], 100)
    if status is None:
        body = b"X-Original-Status: expected the status of the answer, 100 to 599, such as 401\n"
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
        return 400, headers, body
    # A refusal of ratekeeper's own (X-Ratekeeper-Status set) never reached the API: as in serve
    # mode, it is not an answer that counts; nor does a path the decision refused.
    if isinstance(view, RequestView) and not found[6]:
        await enforcer.report_async(view, status)
    return 204, [], b""


async def report(
    enforcer: Enforcer,
    scope: MutableMapping[str, Any],
    send: Send,
    wanted: frozenset[str] | None,
) -> None:
    """``report_verdict`` answered on ASGI."""
    status, headers, body = await report_verdict(enforcer, scope, wanted)
    await _send(send, status, headers, body)
