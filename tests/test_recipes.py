"""The consumer recipes of the documentation (examples/recipes/*.py, shown verbatim on the seed
pages) run against a real ``ratekeeper serve`` serving each seed's preset. Where a recipe's
point is a wait the preset would make a minute long, the gateway serves the preset with that
window shortened and the recipe is paced by the same file."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from gateway_servers import Process, serve
from ratekeeper.policy import preset_path

RECIPES = Path(__file__).resolve().parents[1] / "examples" / "recipes"


def recipe(name: str) -> ModuleType:
    """Import ``examples/recipes/NAME.py`` as a module."""
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", RECIPES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def key() -> str:
    return f"recipe-{uuid.uuid4().hex[:12]}"


def clear_of_boundary(period_s: float, needed_s: float) -> None:
    """Sleep past the next clock-aligned window boundary if fewer than ``needed_s`` remain."""
    left = period_s - time.time() % period_s
    if left < needed_s:
        time.sleep(left + 0.05)


def shortened(preset: str, old: str, new: str, root: Path) -> Path:
    """The preset's file with one line replaced (a window made seconds long)."""
    text = preset_path(preset).read_text(encoding="utf-8")
    assert old in text, f"{preset}: {old!r} is no longer in the preset"
    path = root / f"{preset}-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Process]]:
    """``gateway(preset)`` or ``gateway(config=path)``: one serve process each, on first use."""
    root = tmp_path_factory.mktemp("recipes")
    started: dict[str, Process] = {}
    with ExitStack() as stack:

        def get(preset: str | None = None, config: Path | None = None) -> Process:
            name = preset or str(config)
            if name not in started:
                policy = ["--preset", preset] if preset else ["--config", str(config)]
                store = f"sqlite:///{root / (uuid.uuid4().hex + '.db')}"
                started[name] = stack.enter_context(serve(*policy, "--store", store, cwd=root))
            return started[name]

        yield get
    for process in started.values():
        assert "Traceback" not in process.output(), process.output()


def retries(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The transport's retry log lines."""
    return [r.getMessage() for r in caplog.records if ": retry " in r.getMessage()]


# --- Musique ----------------------------------------------------------------------------------


def test_musique_recipe_warns_when_low_and_never_earns_a_429(
    gateway: Callable[..., Process], caplog: pytest.LogCaptureFixture
) -> None:
    musique = recipe("musique")
    url = gateway("musique").url
    caplog.set_level(logging.INFO)
    # The minute window is aligned to the clock: 95 requests must not straddle two minutes.
    clear_of_boundary(60, 10)
    with musique.musique_client(url, key()) as client:
        tracks = musique.fetch_tracks(client, (f"trk_{1 + n % 20}" for n in range(95)))
        usage = musique.usage(client)
    assert [t["id"] for t in tracks[:3]] == ["trk_1", "trk_2", "trk_3"]
    assert len(tracks) == 95
    assert usage["remaining"]["perMinute"] == 100 - 96
    warned = [r.getMessage() for r in caplog.records if r.name == "recipes.musique"]
    # The 91st answer says 9 remain, the usage call's says 4: a warning for each.
    assert warned == [f"Low rate limit: {n} requests remaining" for n in range(9, 3, -1)]
    assert retries(caplog) == []


def test_musique_recipe_retries_a_429_after_retry_after(
    gateway: Callable[..., Process], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    musique = recipe("musique")
    config = shortened(
        "musique",
        'rates = "100/minute; 1000/hour; 10000/day"',
        'rates = "5/2s; 1000/hour; 10000/day"',
        tmp_path,
    )
    url = gateway(config=config).url
    caplog.set_level(logging.INFO)
    api_key = key()
    clear_of_boundary(2, 1.2)
    # Another process spends the key's window first.
    with httpx.Client(headers={"X-API-Key": api_key}) as other:
        statuses = [other.get(url + "/api/integration/tracks").status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    started = time.monotonic()
    with musique.musique_client(url, api_key, policy=str(config)) as client:
        tracks = musique.fetch_tracks(client, ["trk_7"])
    assert tracks == [
        {"id": "trk_7", "title": "Track 7", "artist": "The Windows", "duration_s": 187}
    ]
    assert len(retries(caplog)) == 1
    assert "429 with a hint" in retries(caplog)[0]
    # Retry-After is at most the 2 s window; the rest is slack for a loaded machine.
    assert time.monotonic() - started < 10


# --- BeatPass ---------------------------------------------------------------------------------


def remaining(url: str, path: str, headers: dict[str, str]) -> int:
    """X-RateLimit-Remaining of one more plain request."""
    response = httpx.get(url + path, headers=headers)
    assert response.status_code == 200, response.text
    return int(response.headers["X-RateLimit-Remaining"])


def test_beatpass_recipe_debounces_typing_into_one_request(
    gateway: Callable[..., Process],
) -> None:
    beatpass = recipe("beatpass")
    url = gateway("beatpass").url
    api_key = key()
    clear_of_boundary(60, 5)

    async def run() -> list[dict[str, object]]:
        async with beatpass.beatpass_client(url, api_key) as client:
            hits: list[dict[str, object]] = await beatpass.search_as_you_type(
                client, ["t", "tr", "tra", "trac", "track", "track ", "track 1"], keystroke_s=0.05
            )
            return hits

    hits = asyncio.run(run())
    assert [h["id"] for h in hits][:2] == ["trk_1", "trk_10"]
    # Seven keystrokes, one search: the global 300/minute saw it and this request only.
    headers = {"Authorization": f"Bearer {api_key}"}
    assert remaining(url, "/api/v1/genres", headers) == 300 - 2


def test_beatpass_recipe_polls_no_faster_than_its_interval(
    gateway: Callable[..., Process],
) -> None:
    beatpass = recipe("beatpass")
    url = gateway("beatpass").url
    assert beatpass.POLL_INTERVAL_S >= 30

    async def run() -> tuple[int, float]:
        async with beatpass.beatpass_client(url, key()) as client:
            started = time.monotonic()
            listings = await beatpass.poll_tracks(client, rounds=3, interval_s=0.5)
            return len(listings), time.monotonic() - started

    rounds, elapsed = asyncio.run(run())
    assert rounds == 3
    assert elapsed >= 1.0


# --- Radio ------------------------------------------------------------------------------------


def test_radio_recipe_caches_by_the_table_and_paginates(gateway: Callable[..., Process]) -> None:
    radio = recipe("radio")
    url = gateway("radio").url
    api_key = key()
    # The page's table, each duration at least the server's own cache TTL for the endpoint.
    server_ttls = {
        "/v1/station": 60,
        "/v1/episodes": 30,
        "/v1/shows": 30,
        "/v1/schedule": 60,
        "/v1/now-playing": 15,
        "/v1/search": 30,
    }
    assert set(radio.CACHE_TTLS) == set(server_ttls)
    assert all(radio.CACHE_TTLS[p] >= server_ttls[p] for p in server_ttls)
    assert radio.NOW_PLAYING_EVERY_S >= 15

    async def run() -> tuple[dict[str, object], list[dict[str, object]], float]:
        async with await radio.radio_client(url, api_key) as client:
            first = await radio.home_page(client)
            again = await radio.home_page(client)
            assert again == first
            episodes: list[dict[str, object]] = await radio.all_episodes(client)
            started = time.monotonic()
            polls = await radio.now_playing(client, rounds=3, every_s=0.4)
            elapsed = time.monotonic() - started
            assert len(polls) == 3
            return first, episodes, elapsed

    home, episodes, elapsed = asyncio.run(run())
    assert home["station"]["name"] == "Ratekeeper FM"  # type: ignore[index]
    assert [e["id"] for e in episodes] == [f"ep_{n}" for n in range(1, 51)]
    assert elapsed >= 0.8
    # Spent of the stream's 60: the home page once (3), 3 pages of episodes, now-playing once
    # (the later polls came from the 15 s cache), and this request.
    headers = {"Authorization": f"Bearer {api_key}"}
    assert remaining(url, "/v1/shows", headers) == 60 - (3 + 3 + 1 + 1)


# --- MusicBrainz ------------------------------------------------------------------------------


def test_musicbrainz_recipe_paces_one_a_second_with_a_contact_user_agent(
    gateway: Callable[..., Process], caplog: pytest.LogCaptureFixture
) -> None:
    musicbrainz = recipe("musicbrainz")
    url = gateway("musicbrainz").url
    caplog.set_level(logging.INFO)
    assert musicbrainz.user_agent("ops@example.org") == "RatekeeperRecipe/1.0 ( ops@example.org )"
    # Why the contact is there: the preset refuses a User-Agent nobody can be reached through.
    refused = httpx.get(url + "/ws/2/artist/mb-0", headers={"User-Agent": "RatekeeperRecipe/1.0"})
    assert refused.status_code == 403
    started = time.monotonic()
    with musicbrainz.musicbrainz_client(url, "ops@example.org") as client:
        found = musicbrainz.lookup(client, "artist", ["mb-1", "mb-2", "mb-3", "mb-4"])
    elapsed = time.monotonic() - started
    assert [a["id"] for a in found] == ["mb-1", "mb-2", "mb-3", "mb-4"]
    assert found[0]["name"] == "Demo Artist"
    # Four requests one second apart; at most two per 2-second window, so no 503 to retry.
    assert elapsed >= 3.0
    assert retries(caplog) == []


# --- AISoule ----------------------------------------------------------------------------------


def test_aisoule_recipe_sends_within_the_burst(
    gateway: Callable[..., Process], caplog: pytest.LogCaptureFixture
) -> None:
    aisoule = recipe("aisoule")
    url = gateway("aisoule").url
    caplog.set_level(logging.INFO)

    async def run() -> tuple[list[dict[str, object]], float]:
        async with aisoule.aisoule_client(url, key()) as client:
            started = time.monotonic()
            answers = await aisoule.send_all(client, ((f"+44{n}", "hi") for n in range(12)))
            return answers, time.monotonic() - started

    answers, elapsed = asyncio.run(run())
    assert len(answers) == 12
    assert all(a["success"] is True for a in answers)
    # 5 at once, then one every 200 ms: the 12th goes about 1.4 s in.
    assert elapsed >= 1.2
    # The burst's first 5 arrive at the server later than they left (new connections), so a
    # request sent on the client's schedule can still meet the server's GCRA: retried, not lost.
    assert len(retries(caplog)) <= 3


def test_aisoule_recipe_retries_a_429_when_another_process_spent_the_burst(
    gateway: Callable[..., Process], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    aisoule = recipe("aisoule")
    # The burst's unit comes back every second, not every 200 ms: the other process's six
    # requests and the client's first must fit in it, which a loaded machine's (or a server
    # warming up) did not always.
    config = shortened("aisoule", 'rates = "5/second"', 'rates = "5/5s"', tmp_path)
    url = gateway(config=config).url
    caplog.set_level(logging.INFO)
    api_key = key()
    headers = {"Authorization": f"Bearer {api_key}"}

    async def run() -> dict[str, object]:
        async with aisoule.aisoule_client(url, api_key, policy=str(config)) as client:
            # Another process spends the burst just before (a slot frees every second).
            with httpx.Client(headers=headers) as other:
                statuses = [
                    other.post(url + "/v1/messages", json={"to": "+44", "text": "x"}).status_code
                    for _ in range(6)
                ]
            assert statuses[:5] == [202] * 5 and statuses[5] == 429
            answer: dict[str, object] = await aisoule.send_message(client, "+4470", "hello")
            return answer

    assert asyncio.run(run())["success"] is True
    assert len(retries(caplog)) == 1


# --- Each recipe as a script ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "printed"),
    [
        ("musique", "95 tracks; remaining: "),
        ("beatpass", "7 keystrokes, 1 request, 11 hits"),
        ("radio", "50 episodes"),
        ("musicbrainz", "Demo Artist"),
        ("aisoule", "sent 10 messages"),
    ],
)
def test_recipe_main_runs(
    gateway: Callable[..., Process],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    printed: str,
) -> None:
    module = recipe(name)
    # The pages' intervals (30 s polls) made short: the script's flow is what is tested here.
    for constant in ("POLL_INTERVAL_S", "NOW_PLAYING_EVERY_S"):
        if hasattr(module, constant):
            monkeypatch.setattr(module, constant, 0.2)
    if name == "musique":
        clear_of_boundary(60, 10)
    second = "ops@example.org" if name == "musicbrainz" else key()
    httpx_level = logging.getLogger("httpx").level  # the musique script quiets httpx
    try:
        result = module.main(gateway(name).url, second)
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    finally:
        logging.getLogger("httpx").setLevel(httpx_level)
    assert printed in capsys.readouterr().out
