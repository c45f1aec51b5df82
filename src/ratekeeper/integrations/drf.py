"""Django REST framework: a throttle class deciding on the ``RATEKEEPER`` setting's policy.

    from ratekeeper.integrations.drf import RateKeeperThrottle

    class SearchView(APIView):
        throttle_classes = [RateKeeperThrottle.of("5/minute", key=lambda request: request.user.pk)]

DRF runs throttles after authentication, so key and cost functions get DRF's request with its
``user``. The throttle makes the request's one decision (the policy's limits for the path and its
own); :class:`~ratekeeper.integrations.django.RateKeeperMiddleware` leaves such views to it and
adds the rate-limit headers. A refusal is DRF's own 429 (``Retry-After`` from the decision).
"""

from __future__ import annotations

from typing import Any, ClassVar

from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from ratekeeper.http.flow import Ticket
from ratekeeper.http.route_limits import CostFunction, KeyFunction, RouteLimits
from ratekeeper.integrations.django import DEFERRED, TICKET, _guard, admit, enforcer

__all__ = ["RateKeeperThrottle"]


class RateKeeperThrottle(BaseThrottle):  # type: ignore[misc]
    """A throttle charging ``limits`` (names of the policy's limits or rates such as
    ``"5/minute"``) beside the policy's; build one with :meth:`of`."""

    ratekeeper_decides: ClassVar[bool] = True
    limits: ClassVar[tuple[str, ...]] = ()
    key: ClassVar[KeyFunction | None] = None
    cost: ClassVar[int | CostFunction | None] = None

    def __init__(self) -> None:
        self._wait: float | None = None

    @classmethod
    def of(
        cls,
        *limits: str,
        key: KeyFunction | None = None,
        cost: int | CostFunction | None = None,
    ) -> type[RateKeeperThrottle]:
        """A throttle class for ``limits`` counted per ``key(request)``, ``cost`` units each."""
        RouteLimits(limits, key, cost)  # bad arguments fail here, where they are written
        return type(
            cls.__name__,
            (cls,),
            {
                "limits": limits,
                "key": None if key is None else staticmethod(key),
                "cost": cost if not callable(cost) else staticmethod(cost),
            },
        )

    def allow_request(self, request: Request, view: Any) -> bool:
        """Decide for ``request`` to ``view``; ``False`` is DRF's 429."""
        django_request = request._request
        owner = f"{type(view).__module__}.{type(view).__qualname__}"
        guard = _guard(owner, RouteLimits(type(self).limits, type(self).key, type(self).cost))
        ticket: Ticket = admit(django_request, guard, request)
        answer = ticket.answer
        if answer is not None:
            retry = {n.lower(): v for n, v in answer.headers}.get("retry-after", "")
            self._wait = float(retry) if retry.isdigit() else None
            return False
        if getattr(django_request, DEFERRED, False):
            setattr(django_request, TICKET, ticket)
        else:
            enforcer().complete(ticket, 200)  # no middleware to do it once the view answered
        return True

    def wait(self) -> float | None:
        """Seconds until the refused request would be accepted (DRF's ``Retry-After``)."""
        return self._wait
