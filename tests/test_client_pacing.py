"""HostState's learned budget: out-of-order answers, echoes of one failure, new windows."""

from __future__ import annotations

import threading
import time

import httpx

from ratekeeper.client import HostPolicy
from ratekeeper.client.hints import NO_HINTS, Hints, Quota
from ratekeeper.client.state import Pacer
from ratekeeper.client.transport import _FairLock

T0 = 1_700_000_000.0


def state_for(policy: HostPolicy):
    return Pacer(default=policy).state_for(httpx.URL("http://api.test/"))


def report(remaining: int, reset_in_s: float | None, limit: int | None = 20) -> Hints:
    return Hints(quotas=(Quota(name="x", limit=limit, remaining=remaining, reset_in_s=reset_in_s),))


def test_lowest_remaining_of_the_window_wins_and_requests_in_flight_are_reserved() -> None:
    state = state_for(HostPolicy(max_in_flight=8))
    seqs = [state.on_send(T0) for _ in range(3)]
    # The server counted the second request before the first: its answer says more is left.
    state.on_answer(seqs[1], T0, 200, report(5, 1.0))
    assert state.estimated_remaining() == 5 - 2
    state.on_answer(seqs[0], T0 + 0.001, 200, report(4, 0.999))
    assert state.estimated_remaining() == 4 - 1
    state.on_answer(seqs[2], T0 + 0.002, 200, report(3, 0.998))
    assert state.estimated_remaining() == 3


def test_spent_budget_waits_for_the_reset_then_assumes_a_whole_window() -> None:
    state = state_for(HostPolicy(max_in_flight=8))
    seq = state.on_send(T0)
    state.on_answer(seq, T0, 200, report(2, 0.5))
    state.on_send(T0)
    state.on_send(T0)
    assert state.wait_s(T0) == 0.5
    assert state.wait_s(T0 + 0.5) == 0.0
    assert state.estimated_remaining() == 20 - 2


def test_new_window_of_unknown_size_is_probed_by_one_request() -> None:
    state = state_for(HostPolicy(max_in_flight=8))
    state.adaptive.window = 8.0
    seq = state.on_send(T0)
    state.on_answer(seq, T0, 200, report(0, 0.5, limit=None))
    assert state.wait_s(T0 + 0.5) == 0.0
    # The largest remaining seen (0) says the window holds at least one request.
    assert state.can_start()
    state.on_send(T0 + 0.5)
    assert not state.can_start()


def test_late_answers_from_an_earlier_window_are_ignored() -> None:
    state = state_for(HostPolicy(max_in_flight=8))
    first, second = state.on_send(T0), state.on_send(T0)
    state.on_answer(second, T0 + 1.1, 200, report(18, 1.9))
    state.on_answer(first, T0 + 1.2, 200, report(0, 0.001))
    assert state.estimated_remaining() == 18


def test_failures_of_requests_already_in_flight_count_once() -> None:
    state = state_for(HostPolicy(max_in_flight=8))
    # Past its first window (sent one request at a time): a second with nothing reported.
    state.on_answer(state.on_send(T0 - 2), T0 - 1, 200, NO_HINTS)
    state.adaptive.window = 8.0
    seqs = [state.on_send(T0) for _ in range(4)]
    hints = Hints(retry_after_s=1.0)
    for seq in seqs:
        state.on_answer(seq, T0, 429, hints)
    # Four 429s for one burst are one failure: obey the hint, no exponential slowdown.
    assert state.adaptive.streak == 1
    assert state.adaptive.delay_s == 0.0
    again = state.on_send(T0 + 1)
    state.on_answer(again, T0 + 1, 429, hints)
    assert state.adaptive.streak == 2
    assert state.adaptive.delay_s == 1.0


def test_spent_budget_waits_for_answers_in_flight_before_the_reset() -> None:
    state = state_for(HostPolicy(max_in_flight=8))
    # Past its first window (sent one request at a time): a second with nothing reported.
    state.on_answer(state.on_send(T0 - 2), T0 - 1, 200, NO_HINTS)
    state.adaptive.window = 8.0
    seqs = [state.on_send(T0) for _ in range(4)]
    state.on_answer(seqs[3], T0, 200, report(3, 0.9))
    assert not state.can_start()  # 3 left, 3 in flight: maybe all spent
    # The server had counted this one before the lowest report: one request is free again.
    state.on_answer(seqs[0], T0, 200, report(6, 0.9))
    assert state.can_start()
    assert state.wait_s(T0) == 0.0


def test_fair_lock_serves_waiters_in_arrival_order() -> None:
    lock = _FairLock()
    lock.acquire()
    order: list[int] = []
    threads = []

    def take(index: int) -> None:
        lock.acquire()
        order.append(index)
        lock.release()

    for index in range(5):
        thread = threading.Thread(target=take, args=(index,))
        thread.start()
        threads.append(thread)
        while len(lock._waiters) < index + 1:
            time.sleep(0.001)
    lock.release()
    for thread in threads:
        thread.join(5)
    assert order == [0, 1, 2, 3, 4]
