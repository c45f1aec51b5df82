"""ASGI plumbing shared by the middlewares: the types, a scope's request view, our answers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Generic, TypeVar

from ratekeeper.http.flow import Answer
from ratekeeper.http.identity import RequestView

__all__ = [
    "ASGIApp",
    "Descriptions",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "send_answer",
    "view_from_scope",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
T = TypeVar("T")


# The wanted header names as bytes, per set of names (a policy has one): ASGI servers send
# names lowercased, so most are told apart without decoding them.
_WANTED_BYTES: dict[frozenset[str], frozenset[bytes]] = {}


def view_from_scope(scope: Scope, wanted: frozenset[str] | None) -> RequestView:
    """The request view of an HTTP scope; only ``wanted`` headers (all when ``None``)."""
    headers: dict[str, str] = {}
    if wanted is None:
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            previous = headers.get(name)
            headers[name] = value if previous is None else f"{previous}, {value}"
    elif wanted:
        names = _WANTED_BYTES.get(wanted)
        if names is None:
            names = _WANTED_BYTES[wanted] = frozenset(n.encode("latin-1") for n in wanted)
        for raw_name, raw_value in scope["headers"]:
            lowered = raw_name
            if lowered not in names:
                # A server that keeps the client's spelling: compare it lowercased.
                lowered = raw_name.lower()
                if lowered not in names:
                    continue
            name = lowered.decode("latin-1")
            value = raw_value.decode("latin-1")
            previous = headers.get(name)
            headers[name] = value if previous is None else f"{previous}, {value}"
    client = scope.get("client")
    query = scope.get("query_string", b"")
    return RequestView(
        scope["method"],
        scope["path"],
        headers,
        client[0] if client else None,
        query.decode("latin-1") if query else "",
    )


class Descriptions(Generic[T]):
    """What ``make(scope, wanted)`` describes of a request, kept by the values it is made of:
    requests that repeat (a client retrying, a proxy asking again) get the same object back,
    with ``True`` (kept), so that the enforcer can know them again (``Enforcer.repeated``).

    The values are the method, path, raw path, query, client address and those of the headers
    ``make`` reads (``wanted`` and ``also``), kept per set of wanted names (a new policy may want
    others). Kept only when every header name is lower-case and none repeats (what uvicorn
    sends): the values of the named headers are then all that ``make`` reads of them.
    """

    # Entries per set of wanted names, and the most values a kept request may carry: a flood
    # of distinct large headers takes about 4096 x 2 kB at most.
    MAX = 4096
    MAX_BYTES = 1024

    def __init__(
        self, make: Callable[[Scope, frozenset[str] | None], T], also: Iterable[bytes] = ()
    ) -> None:
        self._make = make
        self._also = tuple(also)
        # Per set of wanted names: the header names read, and the kept (description, True).
        self._known: dict[
            frozenset[str], tuple[tuple[bytes, ...], dict[tuple[Any, ...], tuple[T, bool]]]
        ] = {}

    def describe(self, scope: Scope, wanted: frozenset[str] | None) -> tuple[T, bool]:
        """The description of ``scope``, and whether it is kept (the same object each time)."""
        headers = scope["headers"]
        table = dict(headers)
        if wanted is None or len(table) != len(headers) or not b"".join(table).islower():
            return self._make(scope, wanted), False
        memo = self._known.get(wanted)
        if memo is None:
            if len(self._known) >= 8:
                self._known.clear()
            names = (*self._also, *sorted(n.encode("latin-1") for n in wanted))
            memo = self._known[wanted] = (names, {})
        names, known = memo
        client = scope.get("client")
        key = (
            scope["method"],
            scope["path"],
            scope.get("raw_path"),
            scope.get("query_string"),
            client[0] if client else None,
            *map(table.get, names),
        )
        found = known.get(key)
        if found is not None:
            return found
        described = self._make(scope, wanted)
        if sum(len(v) for v in key[5:] if v is not None) > self.MAX_BYTES:
            return described, False
        if len(known) >= self.MAX:
            known.clear()
        found = known[key] = (described, True)
        return found


# Answers sent again as they were (the over-limit cache's refusals): id -> (answer, headers),
# the answer kept alive so that its id is not reused meanwhile.
_ENCODED: dict[int, tuple[Answer, list[tuple[bytes, bytes]]]] = {}
_ENCODED_MAX = 512


async def send_answer(send: Send, answer: Answer) -> None:
    """Send one of ratekeeper's own answers (its length added here, once)."""
    found = _ENCODED.get(id(answer))
    if found is not None and found[0] is answer:
        headers = found[1]
    else:
        headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in answer.headers]
        headers.append((b"content-length", str(len(answer.body)).encode()))
        if len(_ENCODED) >= _ENCODED_MAX:
            _ENCODED.clear()
        _ENCODED[id(answer)] = (answer, headers)
    # A copy: a middleware outside may add to the list it is given.
    await send({"type": "http.response.start", "status": answer.status, "headers": list(headers)})
    await send({"type": "http.response.body", "body": answer.body})
