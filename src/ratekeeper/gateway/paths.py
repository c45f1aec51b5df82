"""Request paths as every upstream reads them: one spelling per resource, matched and forwarded.

Route rules must see the path the upstream will serve. ``/api/v1/x/../auth/login`` is the login
to nginx, Apache, Tomcat and most frameworks (they remove dot segments), so the gateway forwards
the path with:

- percent-encoded dots decoded (``%2e`` is ``.``, RFC 3986 2.3), then dot segments removed
  (RFC 3986 5.2.4), Tomcat's ``..;x`` path-parameter form included;
- runs of slashes merged into one (nginx's ``merge_slashes``, on by default);

and matches routes on that path percent-decoded, as a server that decodes it reads it. An
encoded slash (``%2f``) is kept as sent: a server that decodes it reads the path that was
matched, and one that does not reads a single segment, another resource. Paths that servers
would read as different resources are refused (400) rather than guessed at: an encoded slash
that would make a dot segment or an empty one once decoded (``x%2f..%2fauth``), an encoded
backslash or a raw one (a separator on Windows servers), an encoded NUL, double-encoded
dots, slashes and backslashes (``%252e``: a second decoding makes them dots and separators),
and a path that does not start with ``/`` (``*``, or what a lenient parser lets through, which
appended to the upstream's address could name another host).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

from ratekeeper.gateway.proxy import error_answer

__all__ = ["PATH_REFUSAL", "normal_path", "normal_scope", "refuse_path"]

PATH_REFUSAL = (
    "The request path holds an encoded separator, backslash or NUL that servers read in "
    "different ways; send the path with plain slashes and no dot segments."
)

_AMBIGUOUS = re.compile(r"%(?:5c|00|25(?:2e|2f|5c))|\\", re.IGNORECASE)
_ENCODED_DOT = re.compile(r"%2e", re.IGNORECASE)
_SLASHES = re.compile(r"//+")
# What a path in its one spelling never holds: only paths with one of these need a look.
_UNUSUAL = (b"%", b"/.", b"//", b"\\")


def normal_path(raw: bytes) -> tuple[bytes, str] | None:
    """The path to forward for ``raw`` (a request's path, still percent-encoded) and the decoded
    path to match routes on; ``None`` when servers could read it as different resources (see
    the module docstring)."""
    text = raw.decode("latin-1")
    if not text.startswith("/") or _AMBIGUOUS.search(text):
        return None
    forward = _resolved(_ENCODED_DOT.sub(".", text) if "%" in text else text)
    matched = unquote(forward) if "%" in forward else forward
    if matched is not forward and _resolved(matched) != matched:
        return None
    return forward.encode("latin-1"), matched


def _resolved(path: str) -> str:
    if "//" in path:
        path = _SLASHES.sub("/", path)
    if "/." not in path:
        return path
    out: list[str] = []
    parts = path.split("/")[1:]
    last = len(parts) - 1
    for index, segment in enumerate(parts):
        # Tomcat reads "..;x" as "..": a path parameter does not stop a dot segment.
        bare = segment.split(";", 1)[0]
        if bare == ".":
            if index == last:
                out.append("")
        elif bare == "..":
            if out:
                out.pop()
            if index == last:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)


def normal_scope(scope: MutableMapping[str, Any]) -> MutableMapping[str, Any] | None:
    """``scope`` with its path in its one spelling (a copy when that changes it); ``None`` when
    the path must be refused."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
    if raw[:1] == b"/" and not any(part in raw for part in _UNUSUAL):
        return scope
    normal = normal_path(raw)
    if normal is None:
        return None
    scope = dict(scope)
    scope["raw_path"], scope["path"] = normal
    return scope


async def refuse_path(send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    """Answer 400 to a path that upstreams could read differently."""
    headers, body = error_answer(400, "ambiguous_path", PATH_REFUSAL)
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": body})
