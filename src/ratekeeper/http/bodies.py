"""Rejection and error bodies in each API's own format, chosen per policy.

Styles: ``musique``, ``aisoule``, ``radio``, ``plain`` (text), ``problem`` (RFC 9457
``application/problem+json``, quota-exceeded type) and ``template`` (the policy's own text,
for its errors too: a client of that API parses one shape).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ratekeeper.decision import Decision, LimitState
from ratekeeper.http.headers import limit_names

__all__ = ["BodyFormat", "period_words"]

_JSON = "application/json"
_PERIODS = {1.0: "second", 60.0: "minute", 3600.0: "hour", 86400.0: "day"}
_QUOTA_TYPE = "https://iana.org/assignments/http-problem-types#quota-exceeded"
_QUOTA_TITLE = "Request cannot be satisfied as assigned quota has been exceeded"
# Bodies differ only by a few values (mostly the wait): each is rendered once per distinct set,
# up to this many, then the memo starts afresh.
_MEMO_MAX = 1024


def period_words(period_s: float) -> str:
    """``minute`` for 60 s, ``2 seconds`` for 2 s: how a window reads in a sentence."""
    word = _PERIODS.get(period_s)
    return word if word is not None else f"{period_s:g} seconds"


def seconds_words(seconds: int) -> str:
    """``1 second``, ``30 seconds``: a whole wait as it reads in a sentence."""
    return "1 second" if seconds == 1 else f"{seconds} seconds"


def _dump(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class _Null:
    """An error's unknown number in a template: JSON's ``null``, whatever the format spec."""

    def __format__(self, spec: str) -> str:
        return "null"


_NULL = _Null()


@dataclass(frozen=True, slots=True)
class BodyFormat:
    """Renders rejection and error bodies in one style; returns ``(body, content_type)``."""

    style: str = "plain"
    template: str = ""
    template_content_type: str = _JSON
    _memo: dict[Any, tuple[bytes, str]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def rejection(
        self, decision: Decision, status: int, retry_after: int | None
    ) -> tuple[bytes, str]:
        """The body of a 429/503 answer for this decision."""
        binding = decision.binding
        limit = binding.limit
        style = self.style
        # The values this style's body is made of, and nothing else.
        key: Any
        if style in ("musique", "aisoule"):
            key = retry_after
        elif style == "radio":
            key = (limit.amount, limit.period_s)
        elif style == "problem":
            key = (status, *_violated(decision))
        elif style == "template":
            key = (
                status,
                retry_after,
                limit.amount,
                limit.period_s,
                binding.remaining,
                _ceil(binding.reset_at),
                binding.limit_set,
            )
        else:
            key = (status, retry_after, limit.amount, limit.period_s)
        memo = self._memo
        found = memo.get(key)
        if found is None:
            if len(memo) >= _MEMO_MAX:
                memo.clear()
            found = memo[key] = self._render(decision, status, retry_after)
        return found

    def _render(
        self, decision: Decision, status: int, retry_after: int | None
    ) -> tuple[bytes, str]:
        binding = decision.binding
        wait = retry_after if retry_after is not None else 0
        style = self.style
        if style == "musique":
            return _musique(wait, retry_after is not None)
        if style == "aisoule":
            return _aisoule(wait)
        if style == "radio":
            return _dump({"message": _radio_message(binding)}), _JSON
        if style == "problem":
            return _problem(decision, status)
        if style == "template":
            return self._template(
                {
                    "retry_after": wait,
                    "limit": binding.limit.amount,
                    "remaining": binding.remaining,
                    "reset": _ceil(binding.reset_at),
                    "zone": binding.limit_set,
                    "window": period_words(binding.limit.period_s),
                    "message": _radio_message(binding),
                    "status": status,
                    "code": "rate_limit_exceeded",
                }
            )
        what = "Service overloaded" if status == 503 else "Rate limit exceeded"
        tail = f" Retry after {seconds_words(wait)}." if retry_after is not None else ""
        limit = binding.limit
        text = f"{what}: {limit.amount} requests per {period_words(limit.period_s)}.{tail}\n"
        return text.encode(), "text/plain; charset=utf-8"

    def error(
        self, status: int, code: str, message: str, quota: dict[str, int] | None = None
    ) -> tuple[bytes, str]:
        """The body of a non-quota refusal (missing API key or User-Agent, lockout); ``quota``
        (``limit``, ``remaining``, ``reset``, ``retry_after``) fills a template's numbers, else
        they read ``null``."""
        style = self.style
        if style == "template":
            values: dict[str, object] = dict.fromkeys(
                ("retry_after", "limit", "remaining", "reset", "window"), _NULL
            )
            values |= {"zone": code, "message": message, "status": status, "code": code}
            return self._template(values | (quota or {}))
        if style == "musique":
            return _dump(
                {"error": {"code": code, "message": message, "type": "invalid_request_error"}}
            ), _JSON
        if style == "aisoule":
            return _dump({"success": False, "error": {"code": code, "message": message}}), _JSON
        if style == "radio":
            return _dump({"message": message}), _JSON
        if style == "problem":
            return _dump({"title": message, "status": status, "code": code}), (
                "application/problem+json"
            )
        return f"{message}\n".encode(), "text/plain; charset=utf-8"

    def _template(self, values: dict[str, object]) -> tuple[bytes, str]:
        content_type = self.template_content_type
        if "json" in content_type:
            # The template puts text between its own quotes: escaped, a quote in a message
            # cannot break the document.
            values = {k: json.dumps(v)[1:-1] if type(v) is str else v for k, v in values.items()}
        return self.template.format_map(values).encode(), content_type


def _musique(wait: int, can_wait: bool) -> tuple[bytes, str]:
    message = (
        f"Rate limit exceeded. Please retry after {wait} seconds."
        if can_wait
        else "Rate limit exceeded: this request costs more than the limit allows."
    )
    error = {"code": "rate_limit_exceeded", "message": message, "type": "rate_limit_error"}
    return _dump({"error": {**error, "retryAfter": wait}}), _JSON


def _aisoule(wait: int) -> tuple[bytes, str]:
    error = {
        "code": "rate_limit_exceeded",
        "message": "Too many requests. Please wait before retrying.",
        "retry_after_seconds": wait,
    }
    return _dump({"success": False, "error": error}), _JSON


def _problem(decision: Decision, status: int) -> tuple[bytes, str]:
    body = {
        "type": _QUOTA_TYPE,
        "title": _QUOTA_TITLE,
        "status": status,
        "violated-policies": _violated(decision),
    }
    return _dump(body), "application/problem+json"


def _ceil(value: float) -> int:
    return int(-(-value // 1))


def _violated(decision: Decision) -> list[str]:
    """The names of the limits that refused (``RateLimit-Policy`` names)."""
    return [
        name
        for name, state in zip(limit_names(decision), decision.states, strict=True)
        if not state.allowed
    ]


def _radio_message(binding: LimitState) -> str:
    limit = binding.limit
    return f"Rate limit exceeded ({limit.amount} requests per {period_words(limit.period_s)})"
