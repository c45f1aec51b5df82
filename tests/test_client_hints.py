"""Reading limits from headers and bodies: both Retry-After forms, epochs vs deltas, IETF
fields, body hints, and garbage that must be survived."""

from __future__ import annotations

import httpx
import pytest

from ratekeeper.client.hints import (
    MAX_HINT_S,
    parse_body_hint,
    parse_ietf_policy,
    parse_ietf_ratelimit,
    parse_reset,
    parse_retry_after,
    read_hints,
)

NOW = 1_767_225_600.0  # Thu, 01 Jan 2026 00:00:00 GMT


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("Thu, 01 Jan 2026 00:00:30 GMT", 30.0),
        ("Wed, 31 Dec 2025 23:00:00 GMT", 0.0),  # in the past: now
        ("-5", None),
        ("soon", None),
        ("", None),
        ("nan", None),
        ("inf", None),
        ("1e400", None),
        (str(int(MAX_HINT_S) + 1), None),  # absurd: ignored, not obeyed
        ("Thu, 99 Foo 2026 00:00:30 GMT", None),
    ],
)
def test_retry_after_both_forms_and_garbage(value: str, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_retry_after_date_is_read_against_the_server_clock() -> None:
    # The local clock runs 100 s fast; the server's Date keeps the wait at 30 s.
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:30 GMT", NOW + 100, server_now=NOW) == 30.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("30", 30.0),  # a delta
        (str(int(NOW) + 45), 45.0),  # an epoch
        (str(int(NOW) - 45), 0.0),  # an epoch in the past
        (f"{NOW + 2.5:.3f}", 2.5),  # a fractional epoch
        (str(int(NOW * 1000) + 1500), 1.5),  # an epoch in milliseconds
        ("-1", None),
        ("abc", None),
        ("99999999999999999999", None),
    ],
)
def test_reset_epoch_or_delta(value: str, expected: float | None) -> None:
    result = parse_reset(value, NOW)
    assert result == pytest.approx(expected) if expected is not None else result is None


def test_reset_epoch_uses_date_header_against_skew() -> None:
    headers = httpx.Headers(
        {
            "Date": "Thu, 01 Jan 2026 00:00:00 GMT",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(int(NOW) + 20),
        }
    )
    # The local clock is 5 minutes slow: without Date the wait would be 320 s.
    hints = read_hints(headers, None, NOW - 300)
    assert hints.quotas[0].reset_in_s == 20.0


def test_ietf_fields() -> None:
    policy = parse_ietf_policy('"minute";q=100;w=60, "hour";q=1000;w=3600, "day";q=10000;w=86400')
    assert policy == {"minute": (100, 60.0), "hour": (1000, 3600.0), "day": (10000, 86400.0)}
    assert parse_ietf_ratelimit('"minute";r=37;t=23, "hour";r=812;t=1800') == [
        ("minute", 37, 23.0),
        ("hour", 812, 1800.0),
    ]
    assert parse_ietf_ratelimit('"a,b";r=1;t=2;rk-zone="per-ip"') == [("a,b", 1, 2.0)]
    assert parse_ietf_ratelimit('"x";t=5, garbage;;;, "y";r=-1') == []


def test_read_hints_binding_and_zone() -> None:
    headers = httpx.Headers(
        {
            "RateLimit-Policy": '"minute";q=100;w=60, "hour";q=1000;w=3600',
            "RateLimit": '"minute";r=37;t=23, "hour";r=5;t=1800',
            "X-RateLimit-Zone": "per-ip",
        }
    )
    hints = read_hints(headers, None, NOW)
    binding = hints.binding
    assert binding is not None
    assert (binding.name, binding.remaining, binding.limit, binding.window_s) == (
        "hour",
        5,
        1000,
        3600.0,
    )
    assert hints.zone == "per-ip"
    assert hints.wait_s is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # The seeds' bodies: Musique, AISoule, the radio API (no number to use).
        (
            b'{"error":{"code":"rate_limit_exceeded","message":"Rate limit exceeded. Please '
            b'retry after 42 seconds.","type":"rate_limit_error","retryAfter":42}}',
            42.0,
        ),
        (
            b'{"success":false,"error":{"code":"rate_limit_exceeded","message":"Too many '
            b'requests. Please wait before retrying.","retry_after_seconds":15}}',
            15.0,
        ),
        (b'{"message":"Rate limit exceeded (60 requests per minute)"}', None),
        (b'{"detail": "Please retry after 3 seconds"}', 3.0),
        (b'{"retryAfter": "12"}', 12.0),
        (b'{"retryAfter": -3}', None),
        (b'{"retryAfter": true}', None),
        (b"Slow down. Try again in 500 ms.", 0.5),
        (b"retry after 2 minutes", 120.0),
        (b"<html>503 Service Unavailable</html>", None),
        (b"{not json, retry after 4 seconds", 4.0),
        (b"\xff\xfe\x00garbage", None),
        (b"", None),
    ],
)
def test_body_hints(body: bytes, expected: float | None) -> None:
    assert parse_body_hint(body) == expected


def test_nonsense_headers_read_as_nothing() -> None:
    headers = httpx.Headers(
        {
            "Retry-After": "-10",
            "X-RateLimit-Remaining": "lots",
            "X-RateLimit-Reset": "tomorrow",
            "RateLimit": "%%%",
            "Date": "not a date",
        }
    )
    hints = read_hints(headers, b"nothing here", NOW)
    assert hints.wait_s is None
    assert hints.quotas == ()
