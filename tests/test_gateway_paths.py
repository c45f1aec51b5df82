"""A request path's one spelling (``ratekeeper.gateway.paths``): dot segments, encoded dots and
repeated slashes resolved as upstreams resolve them; ambiguous spellings refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ratekeeper.gateway.paths import normal_path


@pytest.mark.parametrize(
    ("raw", "forward", "matched"),
    [
        (b"/api/v1/x/../auth/login", b"/api/v1/auth/login", "/api/v1/auth/login"),
        (b"/api/v1/x/%2e%2e/auth/login", b"/api/v1/auth/login", "/api/v1/auth/login"),
        (b"/api/v1/x/%2E./auth/login", b"/api/v1/auth/login", "/api/v1/auth/login"),
        (b"/api/v1/x/..;jsessionid=1/auth/login", b"/api/v1/auth/login", "/api/v1/auth/login"),
        (b"/api/./v1/", b"/api/v1/", "/api/v1/"),
        (b"/a/b/..", b"/a/", "/a/"),
        (b"/a/b/.", b"/a/b/", "/a/b/"),
        (b"/../../etc/passwd", b"/etc/passwd", "/etc/passwd"),
        (b"/..", b"/", "/"),
        (b"//api///v1//", b"/api/v1/", "/api/v1/"),
        (b"/file%2ejson", b"/file.json", "/file.json"),
        (b"/a/.hidden/..x/...", b"/a/.hidden/..x/...", "/a/.hidden/..x/..."),
        # An encoded slash is forwarded as sent and matched as a server that decodes it reads it.
        (b"/api/v1/auth%2Flogin", b"/api/v1/auth%2Flogin", "/api/v1/auth/login"),
        (b"/projects/group%2Fname/x/../y", b"/projects/group%2Fname/y", "/projects/group/name/y"),
        (b"/caf%C3%A9", b"/caf%C3%A9", "/caf\u00e9"),
    ],
)
def test_the_one_spelling(raw: bytes, forward: bytes, matched: str) -> None:
    assert normal_path(raw) == (forward, matched)


@pytest.mark.parametrize(
    "raw",
    [
        b"/api/v1/x%2f..%2fauth/login",
        b"/api/v1/x%2F%2E%2E%2Fauth/login",
        b"/a%2F%2Fb",
        b"/a/%2F",
        b"/api/v1/x/..%5cauth",
        b"/api\\v1",
        b"/a%00b",
        b"/x/%252e%252e/y",
        b"/x/%252f",
        b"*",
        b"@evil.example/x",
        b"",
    ],
)
def test_paths_read_as_different_resources_are_refused(raw: bytes) -> None:
    assert normal_path(raw) is None


segments = st.sampled_from(["a", "b", "", ".", "..", "%2e", "%2E%2e", "..;p", "x.y"])


@given(st.lists(segments, max_size=8))
def test_normalising_is_idempotent_and_leaves_no_dot_segment(parts: list[str]) -> None:
    normal = normal_path(("/" + "/".join(parts)).encode())
    assert normal is not None
    forward, matched = normal
    assert normal_path(forward) == (forward, matched)
    assert matched.startswith("/")
    assert "//" not in matched
    for segment in matched.split("/"):
        assert segment.split(";")[0] not in (".", "..")
