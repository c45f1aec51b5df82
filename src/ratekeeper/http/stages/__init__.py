"""The stages of admission, one module each, in the order :data:`STAGES` runs them.

``user_agent`` → ``route`` → ``identify`` → ``keys`` → ``lockout`` → ``in_flight`` → ``tiers`` →
``cost`` → ``shadow`` → ``decide`` → ``usage``. See :mod:`ratekeeper.http.flow` for what a stage is.
"""

from __future__ import annotations

from ratekeeper.http.flow import StageFactory
from ratekeeper.http.stages.answer import usage
from ratekeeper.http.stages.cost import cost
from ratekeeper.http.stages.decide import decide, shadow
from ratekeeper.http.stages.identify import identify, user_agent
from ratekeeper.http.stages.in_flight import in_flight
from ratekeeper.http.stages.keys import key_registry
from ratekeeper.http.stages.lockout import lockout
from ratekeeper.http.stages.route import route
from ratekeeper.http.stages.tiers import tiers

__all__ = ["STAGES"]

STAGES: tuple[tuple[str, StageFactory], ...] = (
    ("user_agent", user_agent),
    ("route", route),
    ("identify", identify),
    ("keys", key_registry()),
    ("lockout", lockout),
    ("in_flight", in_flight),
    ("tiers", tiers),
    ("cost", cost),
    ("shadow", shadow),
    ("decide", decide),
    ("usage", usage),
)
"""The built-in stages by name, each with the factory that builds it from a :class:`Kit`."""
