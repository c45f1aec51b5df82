"""Rate strings where a limit name is expected: ``limits = ["5/minute"]`` in a rule, the same
in code (``limit("5/minute")``).

Such a limit is its own budget, named after what owns it (a rule or a route), and counts per
caller, with the defaults of a ``[limits.<name>]`` table. A named limit is what several rules
share; a rate written in place belongs to its one owner.
"""

from __future__ import annotations

from ratekeeper.errors import LimitConfigError, PolicyError, RateSyntaxError
from ratekeeper.limit import LimitSet
from ratekeeper.policy.schema import LimitSpec

__all__ = ["inline_limit", "looks_like_rate"]

_UNSAFE = str.maketrans({":": ".", "{": "(", "}": ")", "\n": " "})


def looks_like_rate(text: str) -> bool:
    """Whether ``text`` is meant as a rate (``"5/minute"``, ``"10/s; 100/h"``) and not a name."""
    head = text.lstrip()
    return "/" in head and head[:1].isdigit()


def inline_limit(owner: str, text: str, where: str) -> LimitSpec:
    """The limit a rate string stands for in ``owner``; errors name ``where`` (file, key path)."""
    rates = "; ".join(part.strip() for part in text.split(";") if part.strip())
    # Store keys keep ':' and braces for themselves; a route owner such as /shows/{id} has them.
    name = f"{owner.translate(_UNSAFE)} {rates}"
    try:
        limit_set = LimitSet(name, rates)
    except (RateSyntaxError, LimitConfigError) as exc:
        raise PolicyError(
            f"{where}: expected a limit name or a rate such as '5/minute': {exc}"
        ) from None
    return LimitSpec(name=limit_set.name, limit_set=limit_set)
