"""Built-in demo APIs, one per preset, so ``ratekeeper serve --preset NAME`` can be tried with curl.

Each demo answers the endpoints its seed document names with small, deterministic JSON (the
radio's episodes have cursor pagination, BeatPass's login refuses a wrong password with 401 so
the lockout can be watched, AISoule's media upload streams the body and counts it). The data is
made up; only the shapes and the paths matter.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ratekeeper.errors import GatewayConfigError

__all__ = ["DEMOS", "demo_app", "try_paths"]

Handler = Callable[[Request], Any]

# --- radio: station, shows, episodes (cursor pagination), schedule, now playing, search -------

_SHOWS = [
    {"id": f"sh_{n}", "title": title, "host": host}
    for n, (title, host) in enumerate(
        [
            ("Morning Drift", "Ada"),
            ("Low End Theory", "Ben"),
            ("Night Shift", "Cleo"),
            ("Field Recordings", "Dev"),
        ],
        start=1,
    )
]
_EPISODES = [
    {
        "id": f"ep_{n}",
        "show_id": _SHOWS[n % len(_SHOWS)]["id"],
        "title": f"{_SHOWS[n % len(_SHOWS)]['title']} #{n}",
        "published_at": f"2024-01-{1 + n % 28:02d}T08:00:00Z",
    }
    for n in range(1, 51)
]


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode().rstrip("=")


def _offset(cursor: str) -> int | None:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        return int(text[2:]) if text.startswith("o:") else None
    except ValueError:
        return None


def _bad_request(message: str) -> JSONResponse:
    return JSONResponse({"message": message}, status_code=400)


def _not_found(what: str) -> JSONResponse:
    return JSONResponse({"message": f"{what} not found"}, status_code=404)


async def _station(request: Request) -> Response:
    return JSONResponse(
        {
            "id": "st_1",
            "name": "Ratekeeper FM",
            "timezone": "Europe/London",
            "stream_url": "https://radio.example/live.mp3",
        }
    )


async def _shows(request: Request) -> Response:
    return JSONResponse({"data": _SHOWS})


async def _show(request: Request) -> Response:
    found = [s for s in _SHOWS if s["id"] == request.path_params["id"]]
    return JSONResponse(found[0]) if found else _not_found("show")


async def _episodes(request: Request) -> Response:
    try:
        limit = int(request.query_params.get("limit", "20"))
    except ValueError:
        return _bad_request("limit must be a whole number between 1 and 100")
    if not 1 <= limit <= 100:
        return _bad_request("limit must be a whole number between 1 and 100")
    cursor = request.query_params.get("cursor")
    start = 0
    if cursor:
        found = _offset(cursor)
        if found is None or not 0 <= found <= len(_EPISODES):
            return _bad_request("cursor is not one this API returned")
        start = found
    page = _EPISODES[start : start + limit]
    end = start + len(page)
    return JSONResponse(
        {"data": page, "next_cursor": _cursor(end) if end < len(_EPISODES) else None}
    )


async def _episode(request: Request) -> Response:
    found = [e for e in _EPISODES if e["id"] == request.path_params["id"]]
    return JSONResponse(found[0]) if found else _not_found("episode")


async def _schedule(request: Request) -> Response:
    slots = [
        {"show_id": show["id"], "starts": f"{6 + 4 * n:02d}:00", "ends": f"{10 + 4 * n:02d}:00"}
        for n, show in enumerate(_SHOWS)
    ]
    return JSONResponse({"data": slots})


async def _now_playing(request: Request) -> Response:
    # generated_at shows the server-side cache at work: it stays put for the cache TTL.
    return JSONResponse(
        {"show": _SHOWS[0], "episode": _EPISODES[0], "generated_at": round(time.time(), 3)}
    )


async def _search(request: Request) -> Response:
    query = request.query_params.get("q", "").strip().lower()
    if not query:
        return _bad_request("q is required")
    hits = [e for e in _EPISODES if query in str(e["title"]).lower()]
    return JSONResponse({"data": hits[:20], "next_cursor": None})


# --- AISoule: status, messages, media upload ---------------------------------------------------


async def _status(request: Request) -> Response:
    return JSONResponse({"success": True, "data": {"status": "operational"}})


async def _messages(request: Request) -> Response:
    if request.method == "GET":
        return JSONResponse({"success": True, "data": [], "next_cursor": None})
    try:
        payload = await request.json()
    except ValueError:
        payload = None
    if not isinstance(payload, dict) or not isinstance(payload.get("to"), str):
        return JSONResponse(
            {
                "success": False,
                "error": {"code": "invalid_request", "message": "expected JSON with 'to'"},
            },
            status_code=400,
        )
    digest = hashlib.blake2b(repr(sorted(payload.items())).encode(), digest_size=6).hexdigest()
    return JSONResponse(
        {"success": True, "data": {"id": f"msg_{digest}", "status": "queued"}}, status_code=202
    )


async def _media(request: Request) -> Response:
    size = 0
    digest = hashlib.blake2b(digest_size=8)
    async for chunk in request.stream():
        size += len(chunk)
        digest.update(chunk)
    return JSONResponse(
        {
            "success": True,
            "data": {
                "id": f"med_{digest.hexdigest()}",
                "bytes": size,
                "content_type": request.headers.get("content-type", "application/octet-stream"),
            },
        },
        status_code=201,
    )


# --- Musique partner API (the usage endpoint is answered by ratekeeper itself) ---------------

_TRACKS = [
    {"id": f"trk_{n}", "title": f"Track {n}", "artist": "The Windows", "duration_s": 180 + n}
    for n in range(1, 21)
]
_LOCATIONS = [{"id": f"loc_{n}", "name": f"Store {n}"} for n in range(1, 6)]


async def _tracks(request: Request) -> Response:
    return JSONResponse({"data": _TRACKS})


async def _track(request: Request) -> Response:
    found = [t for t in _TRACKS if t["id"] == request.path_params["id"]]
    return JSONResponse({"data": found[0]}) if found else _not_found("track")


async def _locations(request: Request) -> Response:
    return JSONResponse({"data": _LOCATIONS})


async def _broadcasts(request: Request) -> Response:
    try:
        payload = await request.json()
    except ValueError:
        payload = None
    locations = payload.get("locations") if isinstance(payload, dict) else None
    if not isinstance(locations, list) or not locations:
        return _bad_request("expected JSON with a non-empty 'locations' list")
    return JSONResponse(
        {"broadcast": {"id": "brd_1", "locations": locations, "status": "scheduled"}},
        status_code=201,
    )


# --- BeatPass: content, media, analytics, writes, auth ----------------------------------------

# The demo account; any other password is refused with 401, which the lockout counts.
DEMO_EMAIL = "demo@beatpass.example"
DEMO_PASSWORD = "correct horse"


def _listing(kind: str, count: int) -> Handler:
    items = [{"id": f"{kind[:3]}_{n}", "name": f"{kind.title()} {n}"} for n in range(1, count + 1)]

    async def handler(request: Request) -> Response:
        return JSONResponse({"data": items, "meta": {"total": count}})

    return handler


async def _bp_search(request: Request) -> Response:
    query = request.query_params.get("q", "").strip().lower()
    hits = [t for t in _TRACKS if query and query in str(t["title"]).lower()]
    return JSONResponse({"data": hits})


async def _bp_track(request: Request) -> Response:
    return JSONResponse({"data": {"id": request.path_params["id"], "title": "Demo beat"}})


async def _stream(request: Request) -> Response:
    async def audio() -> Any:
        for _ in range(4):
            yield b"\xff\xfb\x90\x00" * 1024

    return StreamingResponse(audio(), media_type="audio/mpeg")


async def _image(request: Request) -> Response:
    return Response(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, media_type="image/png")


async def _analytics(request: Request) -> Response:
    return JSONResponse({"data": {"plays": 1234, "listeners": 321, "period": "7d"}})


async def _write(request: Request) -> Response:
    body = await request.body()
    return JSONResponse({"data": {"id": "obj_1", "received_bytes": len(body)}}, status_code=201)


async def _login(request: Request) -> Response:
    try:
        payload = await request.json()
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        return JSONResponse({"message": "expected JSON with email and password"}, status_code=400)
    if payload.get("email") == DEMO_EMAIL and payload.get("password") == DEMO_PASSWORD:
        return JSONResponse({"token": "bp_demo_token", "token_type": "Bearer"})
    return JSONResponse({"message": "Invalid email or password"}, status_code=401)


# --- MusicBrainz web service ------------------------------------------------------------------


def _mb_entity(kind: str) -> Handler:
    async def handler(request: Request) -> Response:
        mbid = request.path_params["mbid"]
        name = {"artist": "Demo Artist", "release": "Demo Release", "recording": "Demo Song"}[kind]
        if request.query_params.get("fmt") == "json":
            key = "name" if kind == "artist" else "title"
            return JSONResponse({"id": mbid, key: name})
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<metadata xmlns="http://musicbrainz.org/ns/mmd-2.0#">'
            f'<{kind} id="{mbid}"><{"name" if kind == "artist" else "title"}>{name}'
            f"</{'name' if kind == 'artist' else 'title'}></{kind}></metadata>"
        )
        return Response(xml, media_type="application/xml")

    return handler


async def _mb_search(request: Request) -> Response:
    query = request.query_params.get("query", "")
    return JSONResponse(
        {"created": "2024-01-01T00:00:00Z", "count": 1 if query else 0, "offset": 0, "artists": []}
    )


DEMOS: dict[str, list[Route]] = {
    "radio": [
        Route("/v1/station", _station),
        Route("/v1/shows", _shows),
        Route("/v1/shows/{id}", _show),
        Route("/v1/episodes", _episodes),
        Route("/v1/episodes/{id}", _episode),
        Route("/v1/schedule", _schedule),
        Route("/v1/now-playing", _now_playing),
        Route("/v1/search", _search),
    ],
    "aisoule": [
        Route("/v1/status", _status, methods=["GET", "HEAD"]),
        Route("/v1/messages", _messages, methods=["GET", "POST"]),
        Route("/v1/media", _media, methods=["POST", "PUT"]),
    ],
    "musique": [
        Route("/api/integration/tracks", _tracks),
        Route("/api/integration/tracks/{id}", _track),
        Route("/api/integration/locations", _locations),
        Route("/api/integration/broadcasts", _broadcasts, methods=["POST"]),
    ],
    "beatpass": [
        Route("/api/v1/tracks", _listing("tracks", 10)),
        Route("/api/v1/tracks/{id}", _bp_track),
        Route("/api/v1/tracks/{id}/stream", _stream),
        Route("/api/v1/artists", _listing("artists", 5)),
        Route("/api/v1/albums", _listing("albums", 5)),
        Route("/api/v1/genres", _listing("genres", 8)),
        Route("/api/v1/search", _bp_search),
        Route("/api/v1/images/{id}", _image),
        Route("/api/v1/media/{id}", _stream),
        Route("/api/v1/analytics/{name}", _analytics),
        Route("/api/v1/dashboard/{name}", _analytics),
        Route("/api/v1/uploads", _write, methods=["POST"]),
        Route("/api/v1/purchases", _write, methods=["POST"]),
        Route("/api/v1/messages", _write, methods=["POST"]),
        Route("/api/v1/auth/login", _login, methods=["POST"]),
    ],
    "musicbrainz": [
        Route("/ws/2/artist/{mbid}", _mb_entity("artist")),
        Route("/ws/2/release/{mbid}", _mb_entity("release")),
        Route("/ws/2/recording/{mbid}", _mb_entity("recording")),
        Route("/ws/2/artist", _mb_search),
    ],
}

# A curl a newcomer can paste for each demo: (headers, path).
_TRY = {
    "radio": ("-H 'Authorization: Bearer demo-key'", "/v1/episodes?limit=2"),
    "aisoule": ("-H 'Authorization: Bearer demo-key'", "/v1/status"),
    "musique": ("-H 'X-API-Key: demo-key'", "/api/integration/tracks"),
    "beatpass": ("-H 'X-API-Key: demo-key'", "/api/v1/tracks"),
    "musicbrainz": ("-A 'demo-app/1.0 (me@example.org)'", "/ws/2/artist/5b11f4ce?fmt=json"),
}


def try_paths(names: Sequence[str]) -> list[tuple[str, str]]:
    """For each demo in ``names``: the curl options and path worth trying first."""
    return [_TRY[name] for name in names if name in _TRY]


def demo_app(names: Sequence[str] = tuple(DEMOS)) -> Starlette:
    """An ASGI app serving the demo APIs named (all five by default)."""
    unknown = [n for n in names if n not in DEMOS]
    if unknown:
        raise GatewayConfigError(
            f"no demo API named {unknown[0]!r}: expected one of {', '.join(DEMOS)}"
        )
    routes = [route for name in names for route in DEMOS[name]]
    return Starlette(routes=routes)
