"""Every preset end to end through a real ``ratekeeper serve`` process over real sockets, in
front of its built-in demo API and in front of a separate upstream (the demo API served alone):
the limits, windows, identities, headers, bodies and endpoints of each seed document."""

from __future__ import annotations

import itertools
import json
import math
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from gateway_servers import Process, client, demo_upstream, serve
from ratekeeper.policy import preset_path

MODES = ("demo", "upstream")
_addresses = itertools.count(1)


def new_address() -> str:
    """A loopback address no other test uses, so per-IP counters start fresh."""
    n = next(_addresses)
    return f"127.0.{20 + n // 250}.{1 + n % 250}"


def key() -> str:
    return f"key-{uuid.uuid4().hex[:12]}"


def clear_of_boundary(period_s: float, needed_s: float) -> None:
    """Sleep past the next aligned window boundary if fewer than ``needed_s`` remain."""
    left = period_s - time.time() % period_s
    if left < needed_s:
        time.sleep(left + 0.02)


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Process]]:
    """``gateways(preset, mode)``: a serve process per (preset, mode), started on first use."""
    root = tmp_path_factory.mktemp("presets")
    started: dict[tuple[str, str], Process] = {}
    with ExitStack() as stack:
        upstream: list[Process] = []

        def get(preset: str, mode: str, config: Path | None = None) -> Process:
            probe = (preset if config is None else str(config), mode)
            if probe not in started:
                policy = ["--preset", preset] if config is None else ["--config", str(config)]
                args = [*policy, "--store", f"sqlite:///{root / (uuid.uuid4().hex + '.db')}"]
                if mode == "upstream":
                    if not upstream:
                        upstream.append(stack.enter_context(demo_upstream(cwd=root)))
                    args += ["--upstream", upstream[0].url]
                started[probe] = stack.enter_context(serve(*args, cwd=root))
            return started[probe]

        yield get
    for process in started.values():
        assert "Traceback" not in process.output(), process.output()


# --- Musique ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_musique_minute_limit_headers_and_429_body(
    gateways: Callable[..., Process], mode: str
) -> None:
    url = gateways("musique", mode).url
    headers = {"X-API-Key": key()}
    clear_of_boundary(60, 5)
    with client() as http:
        for n in range(100):
            r = http.get(url + "/api/integration/tracks", headers=headers)
            assert r.status_code == 200
            assert r.json()["data"][0]["id"] == "trk_1"
            assert r.headers["X-RateLimit-Limit"] == "100"
            assert r.headers["X-RateLimit-Remaining"] == str(99 - n)
        reset = int(r.headers["X-RateLimit-Reset"])
        assert reset % 60 == 0 and 0 < reset - time.time() <= 60
        r = http.get(url + "/api/integration/tracks", headers=headers)
    assert r.status_code == 429
    wait = int(r.headers["Retry-After"])
    assert 1 <= wait <= 60
    assert r.headers["X-RateLimit-Remaining"] == "0"
    assert r.json() == {
        "error": {
            "code": "rate_limit_exceeded",
            "message": f"Rate limit exceeded. Please retry after {wait} seconds.",
            "type": "rate_limit_error",
            "retryAfter": wait,
        }
    }


@pytest.mark.parametrize("mode", MODES)
def test_musique_usage_endpoint_and_missing_key(
    gateways: Callable[..., Process], mode: str
) -> None:
    url = gateways("musique", mode).url
    headers = {"X-API-Key": key()}
    clear_of_boundary(60, 2)
    with client() as http:
        for _ in range(3):
            assert http.get(url + "/api/integration/locations", headers=headers).status_code == 200
        r = http.get(url + "/api/integration/limits", headers=headers)
        assert r.status_code == 200
        assert r.json() == {
            "limits": {"perMinute": 100, "perHour": 1000, "perDay": 10000},
            "usage": {"perMinute": 4, "perHour": 4, "perDay": 4},
            "remaining": {"perMinute": 96, "perHour": 996, "perDay": 9996},
        }
        r = http.post(
            url + "/api/integration/broadcasts", headers=headers, json={"locations": ["loc_1"]}
        )
        assert r.status_code == 201 and r.json()["broadcast"]["locations"] == ["loc_1"]
        r = http.get(url + "/api/integration/tracks")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "missing_api_key"


# --- BeatPass ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_beatpass_global_and_categories_most_restrictive_applies(
    gateways: Callable[..., Process], mode: str
) -> None:
    url = gateways("beatpass", mode).url
    clear_of_boundary(60, 8)
    with client() as http:
        # Per category: the stricter category limit is the one reported and enforced.
        for path, method, limit in [
            ("/api/v1/tracks/7/stream", "GET", 60),
            ("/api/v1/analytics/plays", "GET", 30),
            ("/api/v1/uploads", "POST", 30),
        ]:
            headers = {"Authorization": f"Bearer {key()}"}
            for _ in range(limit):
                r = http.request(method, url + path, headers=headers)
                assert r.status_code in (200, 201), r.text
                assert r.headers["X-RateLimit-Limit"] == str(limit)
            r = http.request(method, url + path, headers=headers)
            assert r.status_code == 429
            error = r.json()["error"]
            assert error["message"] == f"Rate limit exceeded ({limit} requests per minute)"
            assert error["retry_after"] == int(r.headers["Retry-After"])
            # The global budget still has room: content endpoints answer.
            assert http.get(url + "/api/v1/genres", headers=headers).status_code == 200
        # The global limit: 300 per minute per client on general endpoints.
        headers = {"X-API-Key": key()}
        for n in range(300):
            r = http.get(url + ("/api/v1/tracks", "/api/v1/artists")[n % 2], headers=headers)
            assert r.status_code == 200
            assert r.headers["X-RateLimit-Limit"] == "300"
        r = http.get(url + "/api/v1/albums", headers=headers)
    assert r.status_code == 429
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(r.headers["Retry-After"]) >= 1


@pytest.mark.parametrize("mode", MODES)
def test_beatpass_auth_lockout_after_failed_logins(
    gateways: Callable[..., Process], mode: str
) -> None:
    url = gateways("beatpass", mode).url
    login = url + "/api/v1/auth/login"
    good = {"email": "demo@beatpass.example", "password": "correct horse"}
    with client(new_address()) as attacker, client(new_address()) as other:
        for _ in range(5):
            r = attacker.post(login, json={**good, "password": "guess"})
            assert r.status_code == 401
        r = attacker.post(login, json=good)
        assert r.status_code == 429
        assert 890 <= int(r.headers["Retry-After"]) <= 900
        # The lockout answers in the preset's body format, its numbers those of the headers.
        error = r.json()["error"]
        assert error["code"] == "too_many_failed_attempts"
        assert "Too many failed authentication attempts" in error["message"]
        assert (error["limit"], error["remaining"]) == (5, 0)
        assert (error["reset"], error["retry_after"]) == (
            int(r.headers["X-RateLimit-Reset"]),
            int(r.headers["Retry-After"]),
        )
        # "Responses include standard rate limit headers", the lockout's too: the 5 failures
        # allowed are spent until the lock ends.
        assert (r.headers["X-RateLimit-Limit"], r.headers["X-RateLimit-Remaining"]) == ("5", "0")
        reset = int(r.headers["X-RateLimit-Reset"])
        assert 0 <= reset - time.time() - int(r.headers["Retry-After"]) <= 2
        # Another address is not locked out.
        r = other.post(login, json=good)
        assert r.status_code == 200 and r.json()["token_type"] == "Bearer"


# --- Radio ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_radio_sixty_per_minute_from_first_request(
    gateways: Callable[..., Process], mode: str
) -> None:
    url = gateways("radio", mode).url
    headers = {"Authorization": f"Bearer {key()}"}
    paths = ["/v1/station", "/v1/shows", "/v1/schedule", "/v1/now-playing", "/v1/episodes"]
    with client() as http:
        started = time.time()
        for n in range(60):
            r = http.get(url + paths[n % len(paths)], headers=headers)
            assert r.status_code == 200
            if n == 0:
                # The window runs 60 s from the first request, not from a clock minute.
                reset = int(r.headers["X-RateLimit-Reset"])
                assert math.ceil(started + 60) - 1 <= reset <= math.ceil(time.time() + 60)
        r = http.get(url + "/v1/station", headers=headers)
    assert r.status_code == 429
    assert r.json() == {"message": "Rate limit exceeded (60 requests per minute)"}
    assert int(r.headers["Retry-After"]) >= 55


@pytest.mark.parametrize("mode", MODES)
def test_radio_cache_pagination_and_search(gateways: Callable[..., Process], mode: str) -> None:
    url = gateways("radio", mode).url
    headers = {"Authorization": f"Bearer {key()}"}
    with client() as http:
        first = http.get(url + "/v1/now-playing", headers=headers)
        second = http.get(url + "/v1/now-playing", headers=headers)
        assert first.status_code == second.status_code == 200
        assert second.headers.get("X-Cache") == "HIT"
        assert second.json()["generated_at"] == first.json()["generated_at"]
        # A cached answer still counts against the budget, as the seed warns.
        assert int(second.headers["X-RateLimit-Remaining"]) == 58
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": "20", **({"cursor": cursor} if cursor else {})}
            page = http.get(url + "/v1/episodes", headers=headers, params=params).json()
            seen += [e["id"] for e in page["data"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert seen == [f"ep_{n}" for n in range(1, 51)]
        r = http.get(url + "/v1/search", headers=headers, params={"q": "night"})
        assert r.status_code == 200 and r.json()["data"]
        assert http.get(url + "/v1/station").status_code == 401


def test_radio_keys_of_one_stream_share_the_budget(
    gateways: Callable[..., Process], tmp_path: Path
) -> None:
    text = preset_path("radio").read_text()
    config = tmp_path / "radio.toml"
    config.write_text(
        text.replace("accounts = {}", 'accounts = { "key-a" = "stream-1", "key-b" = "stream-1" }')
    )
    url = gateways("radio", "demo", config).url
    with client() as http:
        for n in range(60):
            name = "key-a" if n % 2 else "key-b"
            r = http.get(url + "/v1/shows", headers={"X-API-Key": name})
            assert r.status_code == 200
        assert http.get(url + "/v1/shows", headers={"X-API-Key": "key-a"}).status_code == 429
        assert http.get(url + "/v1/shows", headers={"X-API-Key": "key-b"}).status_code == 429
        # A key of no listed stream has a budget of its own.
        assert http.get(url + "/v1/shows", headers={"X-API-Key": "key-c"}).status_code == 200


# --- MusicBrainz ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_musicbrainz_zones_two_second_windows_and_503(
    gateways: Callable[..., Process], mode: str
) -> None:
    url = gateways("musicbrainz", mode).url
    artist = url + "/ws/2/artist/5b11f4ce-a62d-471e-81fc-a69a8278c7da"
    with client(new_address()) as http:
        r = http.get(artist, headers={"User-Agent": ""})
        assert r.status_code == 403
        assert "User-Agent" in r.text
        clear_of_boundary(2, 1.5)
        for _ in range(2):
            r = http.get(
                artist, params={"fmt": "json"}, headers={"User-Agent": "app-a/1 ( a@example.org )"}
            )
            assert r.status_code == 200 and r.json()["name"] == "Demo Artist"
            # As on the page: passing answers show the global zone's 800.
            assert r.headers["X-RateLimit-Limit"] == "800"
            assert r.headers["X-RateLimit-Zone"] == "global"
        reset = int(r.headers["X-RateLimit-Reset"])
        assert reset % 2 == 0 and 0 < reset - time.time() <= 2
        r = http.get(artist, headers={"User-Agent": "app-a/1 ( a@example.org )"})
        assert r.status_code == 503
        assert r.headers["X-RateLimit-Zone"] == "per-ip-ua"
        assert r.headers["X-RateLimit-Limit"] == "2"
        assert 1 <= int(r.headers["Retry-After"]) <= 2
        assert r.text.startswith("Service overloaded: 2 requests per 2 seconds.")
        # Other applications on the same address: 10 per 2 s for the address as a whole.
        for agent in "bcde":
            for _ in range(2):
                r = http.get(
                    artist, headers={"User-Agent": f"app-{agent}/1 ( https://{agent}.example.org )"}
                )
                assert r.status_code == 200
        r = http.get(artist, headers={"User-Agent": "app-f/1 ( f@example.org )"})
        assert r.status_code == 503
        assert r.headers["X-RateLimit-Zone"] == "per-ip"
        time.sleep(reset - time.time() + 0.05)
        r = http.get(artist, headers={"User-Agent": "app-a/1 ( a@example.org )"})
        assert r.status_code == 200
        assert r.headers["X-RateLimit-Zone"] in ("per-ip", "per-ip-ua", "global")
        assert r.headers["Content-Type"].startswith("application/xml")


# --- AISoule ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_aisoule_standard_limit_and_body(gateways: Callable[..., Process], mode: str) -> None:
    url = gateways("aisoule", mode).url
    headers = {"Authorization": f"Bearer {key()}"}
    with client() as http:
        r = http.get(url + "/v1/status")
        assert r.status_code == 401
        assert r.json()["success"] is False
        for n in range(120):
            r = http.get(url + "/v1/status", headers=headers)
            assert r.status_code == 200
            assert r.headers["X-RateLimit-Limit"] == "120"
            assert r.headers["X-RateLimit-Remaining"] == str(119 - n)
        r = http.get(url + "/v1/status", headers=headers)
        assert r.status_code == 429
        wait = int(r.headers["Retry-After"])
        assert r.json() == {
            "success": False,
            "error": {
                "code": "rate_limit_exceeded",
                "message": "Too many requests. Please wait before retrying.",
                "retry_after_seconds": wait,
            },
        }
        # Messaging has its own budget.
        r = http.post(url + "/v1/messages", headers=headers, json={"to": "+100"})
        assert r.status_code == 202


@pytest.mark.parametrize("mode", MODES)
def test_aisoule_messaging_burst_and_media_uploads(
    gateways: Callable[..., Process], mode: str
) -> None:
    url = gateways("aisoule", mode).url
    headers = {"Authorization": f"Bearer {key()}"}
    with client() as http:
        answers = [
            http.post(url + "/v1/messages", headers=headers, json={"to": "+1"}) for _ in range(8)
        ]
        codes = [a.status_code for a in answers]
        assert codes[:5] == [202] * 5 and 429 in codes[5:]
        # The page's headers describe the 300/minute messaging budget, not the 5/s burst.
        assert [a.headers["X-RateLimit-Limit"] for a in answers[:5]] == ["300"] * 5
        assert [a.headers["X-RateLimit-Remaining"] for a in answers[:5]] == [
            str(299 - n) for n in range(5)
        ]
        r = http.post(url + "/v1/messages", headers=headers, json={"to": "+1"})
        assert r.status_code == 429
        assert r.json()["error"]["retry_after_seconds"] == 1
        time.sleep(0.25)
        r = http.post(url + "/v1/messages", headers=headers, json={"to": "+1"})
        assert r.status_code == 202
        media_key = {"Authorization": f"Bearer {key()}"}
        for _ in range(30):
            r = http.post(url + "/v1/media", headers=media_key, content=b"x" * 1000)
            assert r.status_code == 201 and r.json()["data"]["bytes"] == 1000
            assert r.headers["X-RateLimit-Limit"] == "30"
        r = http.post(url + "/v1/media", headers=media_key, content=b"x")
        assert r.status_code == 429
        assert json.loads(r.text)["error"]["code"] == "rate_limit_exceeded"


def test_demo_hint_in_the_start_up_line(gateways: Callable[..., Process]) -> None:
    process = gateways("musique", "demo")
    first = process.output().splitlines()[0]
    assert "preset musique" in first
    assert "100/minute + 1000/hour + 10000/day per API key" in first
    assert "store SQLite" in first and "demo API" in first
    assert f"listening on {process.url}" in first
    hint = process.output().splitlines()[1]
    assert (
        hint.strip()
        == f"try: curl -i -H 'X-API-Key: demo-key' {process.url}/api/integration/tracks"
    )
    assert httpx.get(process.url + "/healthz").json() == {"status": "ok"}
