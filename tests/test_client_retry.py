"""The retry decision as a pure function: hints, backoff with jitter, caps, idempotency."""

from __future__ import annotations

import pytest

from ratekeeper.client.hints import Hints, Quota
from ratekeeper.client.retry import RetryPolicy, backoff_s, plan_retry
from ratekeeper.errors import ClientConfigError, RatekeeperError, WaitTooLongError

NOW = 1_767_225_600.0


NO_HINTS = Hints()


def plan(
    status: int,
    hints: Hints = NO_HINTS,
    *,
    method: str = "GET",
    retries: int = 0,
    waited: float = 0.0,
    policy: RetryPolicy | None = None,
    rnd: float = 0.5,
):
    return plan_retry(
        method=method,
        status=status,
        hints=hints,
        retries_done=retries,
        waited_s=waited,
        policy=policy or RetryPolicy(),
        random=lambda: rnd,
        url="http://api.test/x",
        now=NOW,
    )


def test_backoff_doubles_from_one_second_with_jitter_on_top() -> None:
    policy = RetryPolicy(backoff_max_s=10)
    assert [backoff_s(n, policy, lambda: 0.0) for n in range(6)] == [1, 2, 4, 8, 10, 10]
    assert [backoff_s(n, policy, lambda: 1.0) for n in range(4)] == [1.5, 3, 6, 10]
    assert backoff_s(3, policy, lambda: 0.25) == 9.0
    assert backoff_s(1000, policy, lambda: 0.5) == 10.0


def test_success_and_unlisted_statuses_are_not_retried() -> None:
    assert not plan(200).retry
    assert not plan(500).retry
    assert plan(500, policy=RetryPolicy(statuses={500})).retry


def test_retry_after_is_obeyed_exactly_on_429() -> None:
    verdict = plan(429, Hints(retry_after_s=7.0))
    assert (verdict.retry, verdict.wait_s) == (True, 7.0)


def test_body_hint_when_no_header() -> None:
    assert plan(429, Hints(body_retry_after_s=15.0)).wait_s == 15.0
    assert plan(429, Hints(retry_after_s=3.0, body_retry_after_s=15.0)).wait_s == 3.0


def test_no_hint_backs_off() -> None:
    assert plan(429, retries=2, rnd=0.5).wait_s == 5.0


def test_retry_after_zero_on_503_waits_at_least_the_backoff() -> None:
    assert plan(503, Hints(retry_after_s=0.0), retries=1, rnd=1.0).wait_s == 3.0
    assert plan(503, Hints(retry_after_s=30.0), retries=1, rnd=1.0).wait_s == 30.0


def test_never_before_the_servers_reset() -> None:
    hints = Hints(
        retry_after_s=1.0,
        quotas=(Quota(name="x", limit=10, remaining=0, reset_in_s=12.0),),
    )
    assert plan(429, hints).wait_s == 12.0


def test_a_whole_second_reset_does_not_outwait_a_retry_after_it_agrees_with() -> None:
    # AISoule's burst: a unit back within 0.2 s (Retry-After 1, rounded up), the bucket full
    # again at a reset written as the next whole second, 1.52 s away: the retry goes at 1 s.
    bucket = Quota(name="x", limit=5, remaining=0, reset_in_s=1.52, reset_rounding_s=1.0)
    assert plan(429, Hints(retry_after_s=1.0, quotas=(bucket,))).wait_s == 1.0
    # A reset more than its rounding past the Retry-After is a real wait.
    late = Quota(name="x", limit=5, remaining=0, reset_in_s=2.5, reset_rounding_s=1.0)
    assert plan(429, Hints(retry_after_s=1.0, quotas=(late,))).wait_s == 2.5


def test_non_idempotent_not_retried_after_503_unless_asked() -> None:
    assert not plan(503, method="POST").retry
    assert plan(503, method="POST", policy=RetryPolicy(retry_unsafe=True)).retry
    # A 429 means the request was not processed: safe to send again.
    assert plan(429, method="POST").retry
    assert plan(503, method="PUT").retry


def test_max_retries() -> None:
    assert plan(429, retries=4, policy=RetryPolicy(max_retries=5)).retry
    assert not plan(429, retries=5, policy=RetryPolicy(max_retries=5)).retry


def test_wait_over_cap_raises_with_deadline() -> None:
    with pytest.raises(WaitTooLongError) as info:
        plan(429, Hints(retry_after_s=3600.0), policy=RetryPolicy(max_wait_s=60))
    err = info.value
    assert isinstance(err, RatekeeperError)
    assert err.deadline == NOW + 3600.0
    assert err.wait_s == 3600.0
    assert "3600" in str(err) and "60" in str(err)


def test_total_wait_cap() -> None:
    policy = RetryPolicy(max_total_wait_s=100)
    assert plan(429, Hints(retry_after_s=40.0), waited=50.0, policy=policy).retry
    with pytest.raises(WaitTooLongError, match="already"):
        plan(429, Hints(retry_after_s=60.0), waited=50.0, policy=policy)


def test_bad_policy_values() -> None:
    with pytest.raises(ClientConfigError, match="max_retries"):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ClientConfigError, match="backoff_base_s"):
        RetryPolicy(backoff_base_s=float("nan"))
