"""A store that stays down is not a short outage (issue 11, attack 5): fail_open lasts at most
``fail_open_max_s`` before decisions fall back to this process's memory, and the outage is
logged periodically with the decisions that went unenforced."""

from __future__ import annotations

import logging

import pytest

from ratekeeper import ManualClock
from ratekeeper.errors import LimitConfigError
from ratekeeper.stores.fail_mode import FailMode
from ratekeeper.stores.fallback import DegradedDecision, FallbackStore
from test_store_fallback import LIMITS, NOW, SwitchableStore


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ratekeeper.store"]


def test_fail_open_is_bounded_then_limits_hold_per_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ratekeeper.store")
    clock = ManualClock(0.0)
    primary = SwitchableStore()
    store = FallbackStore(
        primary, FailMode.FAIL_OPEN, monotonic=clock, fail_open_max_s=300.0, report_every_s=60.0
    )
    primary.error = RuntimeError("database disk image is malformed")
    items = [(LIMITS, "k")]
    # Failing open: an exhausted key is let through, and each such decision is counted.
    for _ in range(10):
        decision = store.decide(items, 1, NOW)
        assert isinstance(decision, DegradedDecision) and decision.allowed
    assert store.unenforced_decisions == 10
    assert store.effective_mode is FailMode.FAIL_OPEN
    clock.advance(61)
    store.decide(items, 1, NOW)
    expected = "11 decisions without it, 11 of them not enforced"
    assert any("still down after 61 s" in line and expected in line for line in _lines(caplog)), (
        _lines(caplog)
    )
    # Past fail_open_max_s: 3/minute holds again, counted in this process.
    clock.advance(240)
    allowed = [store.decide(items, 1, NOW).allowed for _ in range(5)]
    assert allowed == [True, True, True, False, False]
    assert store.effective_mode is FailMode.FALLBACK
    assert store.unenforced_decisions == 11
    assert any("fail_open ends (fail_open_max)" in line for line in _lines(caplog))
    # The store comes back: its own counts again, and the next outage fails open again.
    primary.error = None
    clock.advance(1)
    assert not isinstance(store.decide(items, 1, NOW), DegradedDecision)
    assert store.effective_mode is FailMode.FAIL_OPEN
    assert "11 decisions were not enforced" in _lines(caplog)[-1]


@pytest.mark.parametrize("value", [0, -1, float("inf"), float("nan")])
def test_bounds_must_be_finite_positive(value: float) -> None:
    with pytest.raises(LimitConfigError, match="fail_open_max_s must be a finite number"):
        FallbackStore(SwitchableStore(), FailMode.FAIL_OPEN, fail_open_max_s=value)
