"""The one observer of admission the gateway's operator side adds: every counted decision feeds
the near-limit sample, every refusal the refusal log (see
:meth:`~ratekeeper.http.engine.Enforcer.observe`).

A refusal recalled from the over-limit cache repeats one the store made (at most the cache's
``max_age_s`` before, 1 s by default), which the sample has seen: it is not noted again. Its
refusal-log entry is worked out once per refusal answer (the enforcer renders one per key and
second of its wait) and only counted again for the next ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ratekeeper.http.flow import Context, Ticket
from ratekeeper.http.identity import Caller
from ratekeeper.http.near_limits import NearLimits
from ratekeeper.http.refusals import Entry, RefusalLog
from ratekeeper.stores.over_limit import RecalledRefusal

__all__ = ["AdmissionObserver", "shown_key"]


def shown_key(label: str, label_of: Callable[[str], str | None] | None = None) -> str | None:
    """What a log line shows of a caller: the label ``label_of`` gives its key's digest, else
    the start of the digest (``k:1a2b3c4d``), else the caller's label (an account)."""
    if label == "ip":
        return None
    if label.startswith("k:") and len(label) > 10:
        named = label_of(label[2:]) if label_of is not None else None
        return named or label[:10]
    return label


class AdmissionObserver:
    """Feeds ``sample`` and ``refusals`` from each finished admission."""

    __slots__ = ("_logged", "label_of", "refusals", "sample")

    def __init__(
        self,
        sample: NearLimits,
        refusals: RefusalLog,
        label_of: Callable[[str], str | None] | None = None,
    ) -> None:
        self.sample = sample
        self.refusals = refusals
        self.label_of = label_of
        # id(ticket) -> (ticket, caller, the refusal-log entry): recalled refusals' entries.
        self._logged: dict[int, tuple[Ticket, Caller | None, Entry]] = {}

    def __call__(self, ctx: Context, ticket: Ticket) -> None:
        decision = ctx.decision
        caller = ctx.caller
        recalled = type(decision) is RecalledRefusal
        if recalled:
            logged = self._logged.get(id(ticket))
            if logged is not None and logged[0] is ticket and logged[1] is caller:
                self.refusals.again(decision.now, logged[2])  # type: ignore[union-attr]
                return
        elif decision is not None and caller is not None:
            self.sample.note(decision, caller.label)
        answer = ticket.answer
        if answer is None or answer.status < 400 or ctx.rule is None:
            return
        retry = next((v for k, v in answer.headers if k == "Retry-After"), None)
        zone = ticket.reason
        if decision is not None and not decision.allowed:
            zone = decision.binding.limit_set
        entry = self.refusals.entry(
            status=answer.status,
            rule=ctx.rule.name,
            zone=zone,
            key=shown_key(caller.label, self.label_of) if caller is not None else None,
            address=caller.ip if caller is not None else (ctx.view.peer or "-"),
            retry_after_s=float(retry) if retry is not None and retry.isdigit() else None,
        )
        self.refusals.again(decision.now if decision is not None else time.time(), entry)
        if recalled:
            if len(self._logged) >= 4096:
                self._logged.clear()
            self._logged[id(ticket)] = (ticket, caller, entry)
