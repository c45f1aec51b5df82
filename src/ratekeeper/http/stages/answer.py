"""Answering: the bodies and headers of ratekeeper's own answers, and the usage endpoint.

:class:`Answers` renders every refusal (error bodies in the policy's format, rejections with
their rate-limit headers, overload) and the rate-limit headers of an admitted request; the
``usage`` stage answers the policy's usage endpoint from the decision that admitted it.
"""

from __future__ import annotations

from ratekeeper.decision import Decision
from ratekeeper.http.compiled import CompiledPolicy
from ratekeeper.http.flow import Answer, Context, Kit, Stage, Ticket, repeatable
from ratekeeper.http.headers import PartitionKeys, rate_headers, retry_after_s
from ratekeeper.http.usage import usage_document
from ratekeeper.stores.over_limit import RecalledRefusal

__all__ = ["Answers", "usage"]


class Answers:
    """The policy's answer formats: body style, zone and IETF headers, statuses per limit."""

    __slots__ = ("_body", "_ietf", "_pk", "_status_of", "_zone")

    def __init__(self, plan: CompiledPolicy) -> None:
        spec = plan.policy
        self._body = plan.body
        self._status_of = plan.status_of
        self._zone = spec.zone_header
        self._ietf = spec.ietf_headers
        self._pk = (
            PartitionKeys(spec.ietf_partition_key_secret) if spec.ietf_partition_key else None
        )

    def error(
        self,
        status: int,
        code: str,
        message: str,
        headers: list[tuple[str, str]] | None = None,
        quota: dict[str, int] | None = None,
    ) -> Ticket:
        """A ticket answering ``status`` with an error body in the policy's format (``quota``:
        see :meth:`~ratekeeper.http.bodies.BodyFormat.error`)."""
        content, content_type = self._body.error(status, code, message, quota)
        return Ticket(
            answer=Answer(status, [*(headers or ()), ("Content-Type", content_type)], content),
            reason=code,
        )

    def headers(self, decision: Decision, report: str = "") -> list[tuple[str, str]]:
        """The rate-limit headers of a decision, as the policy asks for them (``report``: the
        limit set an admitted request's headers describe; see
        :func:`~ratekeeper.http.headers.reported`)."""
        return rate_headers(
            decision, zone=self._zone, ietf=self._ietf, partition_keys=self._pk, report=report
        )

    def rejected(self, decision: Decision) -> Ticket:
        """The refusal of a rejected decision: its limit's status, headers and body.

        A refusal the over-limit cache recalls is rendered once per whole second of its wait
        and answered again as is (the same limit, remaining and reset; the IETF fields, which
        count each limit's reset down, are rendered every time).
        """
        if type(decision) is not RecalledRefusal or self._ietf or len(decision.entries) != 1:
            return self._rejected(decision, retry_after_s(decision))
        entry = decision.entries[0]
        wait = retry_after_s(decision)
        memo = entry.memo
        if type(memo) is tuple and memo[0] is self and memo[1] == wait:
            ticket: Ticket = memo[2]
            return ticket
        ticket = self._rejected(decision, wait)
        entry.memo = (self, wait, ticket)
        return ticket

    def _rejected(self, decision: Decision, wait: int | None) -> Ticket:
        zone = decision.binding.limit_set
        status = self._status_of.get(zone, 429)
        headers = self.headers(decision)
        if wait is not None:
            headers.append(("Retry-After", str(wait)))
        body, content_type = self._body.rejection(decision, status, wait)
        headers.append(("Content-Type", content_type))
        return Ticket(answer=Answer(status, headers, body), reason=zone)

    def overloaded(self, zone: str) -> Ticket:
        """The refusal of a request over the in-flight limit ``zone``."""
        status = self._status_of.get(zone, 503)
        headers = [("Retry-After", "1")]
        if self._zone:
            headers.append(("X-RateLimit-Zone", zone))
        return self.error(
            status, "overloaded", "The service is overloaded; retry shortly.", headers
        )


def usage(kit: Kit) -> Stage | None:
    """Answer the policy's usage endpoint with the decision that admitted the request."""
    path = kit.plan.policy.usage_path
    if not path:
        return None

    def stage(ctx: Context) -> Ticket | None:
        decision = ctx.decision
        if ctx.view.path != path or decision is None:
            return None
        headers = [*ctx.ticket.headers, ("Content-Type", "application/json")]
        return Ticket(answer=Answer(200, headers, usage_document(decision)))

    return repeatable(stage)
