"""Told windows without their counting, and the server's clock from Date: pure state, exact."""

from __future__ import annotations

import email.utils

import pytest

from ratekeeper.client import HostPolicy
from ratekeeper.client.hints import Hints, Quota
from ratekeeper.client.pacing import HostPlan
from ratekeeper.client.skew import SkewEstimate
from ratekeeper.client.state import HostState
from ratekeeper.client.windows import WindowPacer

T0 = 1_700_000_000.0  # a multiple of 2: aligned windows of 1 s and 2 s start here


def reset(at: float, now: float, *, rounding: float = 0.0, epoch: bool = True) -> Quota:
    return Quota(
        name="x",
        limit=2,
        remaining=1,
        reset_in_s=at - now,
        reset_rounding_s=rounding,
        reset_epoch=epoch,
    )


def test_at_most_n_in_any_span_measured_from_the_answers() -> None:
    pacer = WindowPacer(2, 2.0, 0.025)
    for sent, answered in [(T0, T0 + 0.05), (T0 + 0.1, T0 + 0.3)]:
        assert pacer.wait_s(sent) == 0.0
        pacer.record(sent)
        pacer.answered(sent, answered)
    # The first request reached the server by T0 + 0.05: the third may arrive 2 s after that.
    assert pacer.wait_s(T0 + 0.3) == pytest.approx(1.751)
    pacer.record(T0 + 2.051)
    assert not pacer.waits_for_answer()
    assert pacer.wait_s(T0 + 2.1) == pytest.approx(0.201)
    pacer.record(T0 + 2.301)
    # The request two back has not been answered: when it reached the server is unknown.
    assert pacer.waits_for_answer()


def test_answers_out_of_order_bound_the_span_by_the_nth_latest() -> None:
    pacer = WindowPacer(2, 1.0, 0.025)
    pacer.record(T0)
    pacer.record(T0 + 0.001)
    # The second request's answer came first, the first's 0.3 s later (a slow server thread).
    pacer.answered(T0 + 0.001, T0 + 0.01)
    pacer.answered(T0, T0 + 0.3)
    # Only one may have reached the server after T0 + 0.01: the third may go a period after
    # the second-latest answer.
    assert pacer.wait_s(T0 + 0.3) == pytest.approx(0.711)
    pacer.record(T0 + 1.011)
    # The fourth: the first may have reached the server at T0 + 0.3 and the third is in
    # flight; the answer of the request sent two back (T0 + 0.01) would let it go too soon.
    assert pacer.wait_s(T0 + 1.02) == pytest.approx(0.281)
    pacer.refund(T0 + 1.011)  # refused: the server did not count it
    assert pacer.wait_s(T0 + 1.02) == 0.0


def test_a_probing_pacer_sends_the_first_request_after_a_wait_alone() -> None:
    pacer = WindowPacer(2, 1.0, 0.025, probe=True)
    for sent in (T0, T0 + 0.001):
        pacer.record(sent)
        pacer.answered(sent, sent + 0.01)
        assert not pacer.waits_for_answer()
    assert pacer.wait_s(T0 + 0.02) == pytest.approx(0.991)
    # The window held it back: the first request after it goes alone, the next waits.
    pacer.record(T0 + 1.011)
    assert pacer.waits_for_answer()
    pacer.answered(T0 + 1.011, T0 + 1.02)
    assert not pacer.waits_for_answer()
    pacer.record(T0 + 1.021)
    assert not pacer.waits_for_answer()
    # Refused: its place is free and the request after the next wait probes again.
    assert pacer.wait_s(T0 + 1.03) > 0
    pacer.record(T0 + 2.03)
    assert pacer.waits_for_answer()
    pacer.refund(T0 + 2.03)
    assert not pacer.waits_for_answer()


def test_a_refused_request_frees_its_place() -> None:
    pacer = WindowPacer(1, 1.0, 0.025)
    pacer.record(T0)
    pacer.answered(T0, T0 + 0.01)
    pacer.refund(T0)
    assert pacer.wait_s(T0 + 0.02) == 0.0


def test_aligned_windows_learned_only_from_a_reset_no_own_window_explains() -> None:
    pacer = WindowPacer(2, 2.0, 0.025)
    pacer.record(T0 + 1.2)
    pacer.answered(T0 + 1.2, T0 + 1.21)
    # A first-hit window from T0 + 1.2 would end at T0 + 3.2 (or a second either side,
    # written in whole seconds): T0 + 3 says nothing.
    pacer.observe(reset(T0 + 3.0, T0 + 1.21, rounding=1.0), T0 + 1.21)
    assert pacer.model == "moving"
    # A whole-second delta says too little about where a window starts.
    pacer.observe(reset(T0 + 2.0, T0 + 1.21, rounding=1.0, epoch=False), T0 + 1.21)
    assert pacer.model == "moving"
    # An epoch at T0 + 2 is earlier than any window this client started could end.
    pacer.observe(reset(T0 + 2.0, T0 + 1.21, rounding=1.0), T0 + 1.21)
    assert pacer.model == "aligned"
    pacer.record(T0 + 1.3)
    pacer.answered(T0 + 1.3, T0 + 1.31)
    # The window is full: the next request goes at the boundary, not 2 s after the first.
    assert pacer.wait_s(T0 + 1.32) == pytest.approx(0.68)


def test_aligned_windows_count_a_request_near_a_boundary_on_both_sides() -> None:
    pacer = WindowPacer(2, 1.0, 0.05)
    pacer.aligned_phase_s = 0.0
    pacer.record(T0 + 0.98)  # may land in either window
    assert pacer.wait_s(T0 + 0.99) == 0.0
    pacer.record(T0 + 0.99)
    pacer.answered(T0 + 0.98, T0 + 1.01)
    pacer.answered(T0 + 0.99, T0 + 1.02)
    # Both may have landed after the boundary: the new window may be full already.
    assert pacer.wait_s(T0 + 1.03) == pytest.approx(0.97)


def http_date(at: float) -> str:
    return email.utils.formatdate(at, usegmt=True)


def test_skew_acted_on_only_when_rounding_cannot_explain_it() -> None:
    lagging = SkewEstimate()
    for step in range(10):
        now = T0 + step * 0.37
        # A cached Date, up to a second stale and rounded down: rounding explains it.
        assert lagging.observe(http_date(int(now) - 1), now) == 0.0
    ahead = SkewEstimate()
    for step in range(10):
        now = T0 + step * 0.37
        skew = ahead.observe(http_date(int(now + 30)), now)
    assert 29.0 <= skew <= 30.0
    # The server's clock jumped back: only the newest answers describe it.
    assert ahead.observe(http_date(int(T0 + 10)), T0 + 10) == 0.0
    assert ahead.observe("not a date", T0 + 10) == 0.0


def test_a_slow_answer_is_no_skew() -> None:
    # The same clocks; a Date cached a second and read 0.9 s into its second, whose answer
    # then took 0.8 s (CI: a server warming up). Read at the answer alone, the Date looked
    # 2.7 s stale, a skew of -0.7 s rounding cannot explain: every epoch reset read late.
    estimate = SkewEstimate()
    assert estimate.observe(http_date(T0 - 1), T0 + 1.7, sent=T0 + 0.85) == 0.0
    # A real skew is still found through slow answers: the round trip only widens each one.
    ahead = SkewEstimate()
    for step in range(10):
        sent = T0 + step * 0.37
        skew = ahead.observe(http_date(int(sent + 30.1)), sent + 0.5, sent=sent)
    assert 28.5 <= skew <= 30.1


def _window(state: HostState, first_sent: float, first_answer: float, reset_at: float) -> float:
    """Ten requests of a learned 10-per-period window, the first answered slowly; returns
    when the last answer came."""
    now = first_answer
    for remaining in range(9, -1, -1):
        sent = first_sent if remaining == 9 else now
        assert state.wait_s(sent) == 0.0
        quota = Quota(
            name="x",
            limit=10,
            remaining=remaining,
            reset_in_s=reset_at - now,
            reset_rounding_s=1.0,
            reset_epoch=True,
        )
        state.on_answer(state.on_send(sent), now, 200, Hints(quotas=(quota,)), sent_at=sent)
        now += 0.003
    return now


def test_a_slow_first_answer_probes_the_shorter_period_first() -> None:
    """A first answer 0.8 s late leaves a 1 s and a 2 s period possible behind a reset rounded
    up to whole seconds: the shorter is probed (it was believed from the send, a whole period
    lost); a refusal rules it out for the next window without believing every later reset."""
    state = HostState(HostPlan.build("api.test", HostPolicy()))
    # The server counted the first request at T0 + 0.7: true reset T0 + 1.7, written T0 + 2.
    now = _window(state, T0, T0 + 0.8, T0 + 2.0)
    probe_at = T0 + 0.8 + 1.0 + state.plan.policy.margin_s
    assert now + state.wait_s(now) - T0 == pytest.approx(probe_at - T0)
    # The probe is refused (the server's window was 2 s after all).
    state.wait_s(probe_at)
    seq = state.on_send(probe_at)
    refused = Quota(name="x", limit=10, remaining=0, reset_in_s=0.2, reset_epoch=True)
    state.on_answer(seq, probe_at + 0.003, 429, Hints(quotas=(refused,)), sent_at=probe_at)
    assert state.period_s is None
    # The next window, again with a slow first answer: the 1 s guess is not tried again, and
    # its reset (written 3 s after the first send) is not simply believed either: the 2 s
    # guess is probed before it.
    start = T0 + 2.1
    now = _window(state, start, start + 0.8, start + 3.0)
    expected = start + 0.8 + 2.0 + state.plan.policy.margin_s
    assert now + state.wait_s(now) - T0 == pytest.approx(expected - T0)


def test_a_period_ruled_out_is_not_probed_again_when_no_other_fits() -> None:
    """Aligned 2-s windows: a first request sent late in one and counted in the next (0.8 s
    on the way) leaves 1 s and 2 s possible; 1 s is probed and refused. A later window's
    first send, just after its start, leaves under 2 s to its written reset: only the period
    ruled out fits, so the reset is believed. It was probed again: a second refusal."""
    state = HostState(HostPlan.build("api.test", HostPolicy()))
    margin = state.plan.policy.margin_s

    def answer(sent: float, now: float, remaining: int, reset_at: float, status: int = 200) -> None:
        quota = Quota(
            name="x",
            limit=2,
            remaining=remaining,
            reset_in_s=reset_at - now,
            reset_rounding_s=1.0,
            reset_epoch=True,
        )
        state.on_answer(state.on_send(sent), now, status, Hints(quotas=(quota,)), sent_at=sent)

    assert state.wait_s(T0 + 1.5) == 0.0
    answer(T0 + 1.5, T0 + 2.3, 1, T0 + 4.0)
    assert state.wait_s(T0 + 2.3) == 0.0
    answer(T0 + 2.3, T0 + 2.303, 0, T0 + 4.0)
    probe_at = T0 + 2.3 + 1.0 + margin
    assert state.wait_s(T0 + 2.303) == pytest.approx(probe_at - (T0 + 2.303))
    assert state.wait_s(probe_at) == 0.0
    answer(probe_at, probe_at + 0.003, 0, T0 + 4.0, status=503)
    assert state.period_s is None
    # The next window: its first request sent 1 ms into it, both of its units spent.
    assert state.wait_s(T0 + 4.001) == 0.0
    answer(T0 + 4.001, T0 + 4.005, 1, T0 + 6.0)
    assert state.wait_s(T0 + 4.005) == 0.0
    answer(T0 + 4.005, T0 + 4.008, 0, T0 + 6.0)
    assert state.wait_s(T0 + 4.008) == pytest.approx(6.0 - 4.008)
