"""What the seed pages show, checked where a user of each page would notice (issue 12): cached
answers read by Node (the radio page's examples are JavaScript), which limit the headers report,
MusicBrainz's contact User-Agent, BeatPass's JSON refusals, Musique's 401 and the radio cache
shared by two gateway processes. Real servers throughout: uvicorn, wsgiref, ``ratekeeper serve``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from gateway_servers import client, serve
from ratekeeper.errors import PolicyError
from ratekeeper.http.engine import Enforcer
from ratekeeper.http.identity import RequestView
from ratekeeper.policy import load_policy, loads_policy, preset_path
from redis_servers import redis_server
from test_http_support import KINDS
from test_http_support import serve as serve_app

NODE = shutil.which("node")

# Two requests with fetch() (undici), two with http.get (llhttp): each parser on a miss and a
# hit. A malformed answer (a second Content-Length) makes them throw, and the script exit 1.
NODE_SCRIPT = """
const http = require("node:http");
const [url, name, value] = process.argv.slice(2);
const headers = { [name]: value };
function get(target) {
  return new Promise((resolve, reject) => {
    const req = http.get(target, { headers, agent: false }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk) => (body += chunk));
      res.on("end", () =>
        resolve({ status: res.statusCode, cache: res.headers["x-cache"] || "", body }));
    });
    req.on("error", reject);
  });
}
(async () => {
  const seen = [];
  for (let i = 0; i < 2; i++) {
    const res = await fetch(url, { headers });
    const cache = res.headers.get("x-cache") || "";
    seen.push({ status: res.status, cache, body: await res.text() });
  }
  for (let i = 0; i < 2; i++) seen.push(await get(url));
  console.log(JSON.stringify(seen));
})().catch((err) => {
  console.error(String(err && err.cause ? err.cause.code || err.cause : err));
  process.exit(1);
});
"""


def node_reads(tmp_path: Path, url: str, header: tuple[str, str]) -> list[dict[str, object]]:
    """What Node's fetch and http.get saw for four GETs of ``url``."""
    if NODE is None:
        pytest.skip("node is not installed: the Content-Length check needs Node's HTTP parsers")
    script = tmp_path / "read.js"
    script.write_text(NODE_SCRIPT)
    done = subprocess.run(
        [NODE, str(script), url, *header], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"node could not read the answers: {done.stderr}"
    seen: list[dict[str, object]] = json.loads(done.stdout)
    return seen


RADIO = """
body = "radio"
apply = ["stream"]
[identity]
source = "api_key"
anonymous = "reject"
[limits.stream]
rates = "60/minute"
[[rules]]
routes = ["/v1/now-playing"]
methods = ["GET"]
cache_ttl = "15s"
"""


@pytest.mark.parametrize("kind", KINDS)
def test_node_reads_cached_answers_of_the_middleware(kind: str, tmp_path: Path) -> None:
    with serve_app(kind, RADIO) as srv:
        seen = node_reads(tmp_path, srv.url + "/v1/now-playing", ("X-API-Key", "k1"))
    assert [s["status"] for s in seen] == [200] * 4
    assert [s["cache"] for s in seen] == ["", "HIT", "HIT", "HIT"]
    assert len({s["body"] for s in seen}) == 1
    assert srv.state.calls == {"/v1/now-playing": 1}


def test_node_reads_cached_answers_of_the_radio_preset(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'radio.db'}"
    with serve("--preset", "radio", "--store", store, cwd=tmp_path) as gateway:
        seen = node_reads(
            tmp_path, gateway.url + "/v1/now-playing", ("Authorization", "Bearer radio-demo-a1")
        )
    assert [s["status"] for s in seen] == [200] * 4
    assert [s["cache"] for s in seen] == ["", "HIT", "HIT", "HIT"]
    assert len({s["body"] for s in seen}) == 1


def test_radio_cache_is_shared_by_two_gateways_on_one_sqlite_file(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'shared.db'}"
    key = {"Authorization": f"Bearer radio-{uuid.uuid4().hex[:12]}"}
    with (
        serve("--preset", "radio", "--store", store, cwd=tmp_path) as one,
        serve("--preset", "radio", "--store", store, cwd=tmp_path) as two,
        client() as http,
    ):
        first = http.get(one.url + "/v1/now-playing", headers=key)
        second = http.get(two.url + "/v1/now-playing", headers=key)
        assert first.status_code == second.status_code == 200
        assert "X-Cache" not in first.headers
        # "Two identical requests within the cache window return the same data", whichever
        # instance answers.
        assert second.headers["X-Cache"] == "HIT"
        assert second.json()["generated_at"] == first.json()["generated_at"]
        # Both counted against the one budget the store keeps.
        assert int(second.headers["X-RateLimit-Remaining"]) == 58
        # Another caller's cache entry is its own (vary = "caller").
        other = http.get(two.url + "/v1/now-playing", headers={"X-API-Key": "radio-demo-b1"})
        assert "X-Cache" not in other.headers


def test_musicbrainz_user_agent_must_name_a_contact(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'mb.db'}"
    artist = "/ws/2/artist/5b11f4ce-a62d-471e-81fc-a69a8278c7da"
    with serve("--preset", "musicbrainz", "--store", store, cwd=tmp_path) as gateway:
        for agent in ("x", "python-requests/2.31", "MyApp/1.0 (me at example)", "a@b"):
            with client("127.0.5.1", headers={"User-Agent": agent}) as http:
                r = http.get(gateway.url + artist)
            assert r.status_code == 403, agent
            assert "an e-mail address or a URL" in r.text
            assert "MyApp/1.2 ( me@example.com )" in r.text
        for n, agent in enumerate(
            ("MyApp/1.0 ( me@example.com )", "Other/2 +https://other.example.org/contact")
        ):
            with client(f"127.0.5.{2 + n}", headers={"User-Agent": agent}) as http:
                r = http.get(gateway.url + artist)
            assert r.status_code == 200, agent
            assert (r.headers["X-RateLimit-Limit"], r.headers["X-RateLimit-Zone"]) == (
                "800",
                "global",
            )


def test_the_bearer_challenge_only_where_keys_travel_as_bearer_tokens(tmp_path: Path) -> None:
    with (
        serve(
            "--preset", "musique", "--store", f"sqlite:///{tmp_path / 'm.db'}", cwd=tmp_path
        ) as musique,
        serve(
            "--preset", "aisoule", "--store", f"sqlite:///{tmp_path / 'a.db'}", cwd=tmp_path
        ) as aisoule,
        client() as http,
    ):
        r = http.get(musique.url + "/api/integration/tracks")
        assert r.status_code == 401
        assert "WWW-Authenticate" not in r.headers
        assert "x-api-key" in r.json()["error"]["message"].lower()
        r = http.get(aisoule.url + "/v1/status")
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"] == "Bearer"


def test_headers_limit_names_a_limit_of_the_policy() -> None:
    base = 'apply = ["api"]\n[limits.api]\nrates = "5/minute"\n'
    with pytest.raises(
        PolicyError, match=r"p.toml: headers_limit: expected the name of a \[limits\]"
    ):
        loads_policy('headers_limit = "apii"\n' + base, "p.toml")
    rule = '[[rules]]\nroutes = ["/x"]\nheaders_limit = "nope"\n'
    with pytest.raises(PolicyError, match=r"rules\[0\]\.headers_limit: expected .*\(api\)"):
        loads_policy(base + rule, "p.toml")
    with pytest.raises(PolicyError, match=r"user_agent_contact: expected a list of email and url"):
        loads_policy('user_agent_contact = ["phone"]\n' + base, "p.toml")


def test_radio_cache_is_shared_by_two_gateways_on_one_redis(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        store = f"redis://127.0.0.1:{server.port}/0"
        key = {"X-API-Key": f"radio-{uuid.uuid4().hex[:12]}"}
        with (
            serve("--preset", "radio", "--store", store, cwd=tmp_path) as one,
            serve("--preset", "radio", "--store", store, cwd=tmp_path) as two,
            client() as http,
        ):
            first = http.get(one.url + "/v1/schedule", headers=key)
            second = http.get(two.url + "/v1/schedule", headers=key)
            assert first.status_code == second.status_code == 200
            assert second.headers["X-Cache"] == "HIT"
            assert second.json() == first.json()
            stored = server.client().keys("rk:values:*")
        assert len(stored) == 1 and b"radio-" not in stored[0]


def test_long_user_agents_cost_little_to_refuse() -> None:
    enforcer = Enforcer(load_policy(preset_path("musicbrainz")), store="memory://")
    started = time.monotonic()
    for agent in ("a" * 8000, "a@" + "a." * 4000, ("a" * 50 + "@") * 150, "x" * 7000 + "@"):
        for _ in range(5):
            ticket = enforcer.admit(
                RequestView("GET", "/ws/2/artist", {"user-agent": agent}, "1.2.3.4")
            )
            assert ticket.answer is not None and ticket.answer.status == 403
    # A pattern rescanning the header from every position took ~0.8 s per request here.
    assert time.monotonic() - started < 5
