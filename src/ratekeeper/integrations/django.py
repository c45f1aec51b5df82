"""Django: a middleware, the ``RATEKEEPER`` setting and view decorators.

    # settings.py
    MIDDLEWARE = [
        ...,
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "ratekeeper.integrations.django.RateKeeperMiddleware",   # after auth: request.user
    ]
    RATEKEEPER = {"POLICY": BASE_DIR / "policy.toml"}    # or a dict of policy tables

    # views.py
    from ratekeeper.integrations.django import exempt, limit

    @limit("5/minute", key=lambda request: request.user.pk)
    def search(request): ...

    @limit("10/minute")
    class ExportView(View): ...

``RATEKEEPER`` keys: ``POLICY`` (a path, a Policy or a dict of policy tables; required),
``STORE`` (a store URL instead of the policy's), ``ENABLED`` (``False`` checks nothing). The
middleware makes each request's one decision (the policy's limits for the path and its view's)
before the view runs; without it, the decorators decide for their views alone. Key and cost
functions get Django's request (``request.user`` when authentication ran first). For Django REST
framework, see :mod:`ratekeeper.integrations.drf`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from django.conf import settings
from django.core.signals import setting_changed
from django.http import HttpRequest, HttpResponse
from django.urls import Resolver404, resolve

from ratekeeper.errors import PolicyError
from ratekeeper.http.compiled import CompiledRule
from ratekeeper.http.engine import Enforcer
from ratekeeper.http.flow import Answer, Ticket
from ratekeeper.http.identity import RequestView
from ratekeeper.http.route_limits import (
    CostFunction,
    KeyFunction,
    RouteGuard,
    RouteLimits,
    combine,
)
from ratekeeper.http.workers import warn_if_split
from ratekeeper.http.wsgi_environ import view_from_environ
from ratekeeper.policy import Policy, load_policy, policy_from_mapping

__all__ = ["RateKeeperMiddleware", "admit", "enforcer", "exempt", "limit", "respond"]

View = TypeVar("View", bound=Callable[..., Any])
_ATTRIBUTE = "_ratekeeper_limits"
_DECIDED = "_ratekeeper_decided"
_MEMO_MAX = 8192
DEFERRED = "_ratekeeper_deferred"
"""Set on a request whose decision a later component makes (the DRF throttle)."""
TICKET = "_ratekeeper_ticket"
"""Where that component leaves its ticket for the middleware (headers, completion)."""

_state: dict[str, Any] = {}
_guards: dict[tuple[int, str], RouteGuard] = {}


def _setting() -> Mapping[str, Any]:
    value = getattr(settings, "RATEKEEPER", None)
    if not isinstance(value, Mapping) or "POLICY" not in value:
        raise PolicyError(
            "settings.RATEKEEPER: expected a dict with 'POLICY' (a policy file's path, a Policy "
            f"or a dict of policy tables), got {value!r}"
        )
    return value


def _policy_of(value: object) -> Policy:
    if isinstance(value, Policy):
        return value
    if isinstance(value, Mapping):
        return policy_from_mapping(value, "settings.RATEKEEPER['POLICY']")
    if isinstance(value, str) or hasattr(value, "__fspath__"):
        return load_policy(value)  # type: ignore[arg-type]
    raise PolicyError(
        "settings.RATEKEEPER['POLICY']: expected a policy file's path, a Policy or a dict of "
        f"policy tables, got {value!r}"
    )


def enforcer() -> Enforcer:
    """The enforcer of the ``RATEKEEPER`` setting, built on first use."""
    found: Enforcer | None = _state.get("enforcer")
    if found is None:
        setting = _setting()
        found = Enforcer(_policy_of(setting["POLICY"]), store=setting.get("STORE"))
        _state["enforcer"] = found
        _state["enabled"] = bool(setting.get("ENABLED", True))
        warn_if_split(found.store, "settings.RATEKEEPER")
    return found


def _forget(*, setting: str, **_: Any) -> None:
    # override_settings(RATEKEEPER=...) in a test builds a new enforcer.
    if setting == "RATEKEEPER":
        _state.clear()
        _guards.clear()


setting_changed.connect(_forget)


def _enabled() -> bool:
    enforcer()
    return bool(_state["enabled"])


def _owner(view: Any) -> str:
    return f"{view.__module__}.{view.__qualname__}"


def _guard(owner: str, spec: RouteLimits | None) -> RouteGuard | None:
    if spec is None:
        return None
    current = enforcer()
    probe = (id(current), owner)
    guard = _guards.get(probe)
    if guard is None:
        guard = _guards[probe] = RouteGuard(current, owner, spec)
    return guard


def admit(request: HttpRequest, guard: RouteGuard | None, framework_request: Any = None) -> Ticket:
    """Admit ``request`` under the policy (and ``guard``'s limits); key and cost functions get
    ``framework_request`` (Django's request by default)."""
    current = enforcer()
    view = view_from_environ(request.META, current.header_names)
    rule = None if guard is None else guard.rule(view.method, view.path)
    return current.admit(_with_request(view, framework_request or request), rule)


def _with_request(view: RequestView, request: Any) -> RequestView:
    return RequestView(view.method, view.path, view.headers, view.peer, view.query, request)


def respond(answer: Answer) -> HttpResponse:
    """One of ratekeeper's own answers as a Django response."""
    response = HttpResponse(answer.body, status=answer.status)
    for name, value in answer.headers:
        response[name] = value
    return response


def _finish(
    ticket: Ticket, response: HttpResponse, current: Enforcer | None = None
) -> HttpResponse:
    for name, value in ticket.headers:
        response[name] = value
    (current or enforcer()).complete(ticket, response.status_code)
    return response


def _limits_of(view: Any) -> RouteLimits | None:
    classes = [getattr(view, "view_class", None), getattr(view, "cls", None)]
    return combine(
        [getattr(view, _ATTRIBUTE, None), *(getattr(c, _ATTRIBUTE, None) for c in classes)]
    )


def _deferred(view: Any) -> bool:
    """Whether a DRF view of ``view`` has a ratekeeper throttle (which decides)."""
    throttles = getattr(getattr(view, "cls", None), "throttle_classes", ())
    return any(getattr(throttle, "ratekeeper_decides", False) for throttle in throttles)


class _ViewLimits:
    """A decorated view's limits (``spec_of()``: read on its first request), their guard under
    the current enforcer and their one rule per plan, method and path, so a request resolves
    nothing again."""

    __slots__ = ("enforcer", "guard", "owner", "rules", "spec_of")

    def __init__(self, owner: str, spec_of: Callable[[], RouteLimits | None]) -> None:
        self.owner = owner
        self.spec_of = spec_of
        self.enforcer: Enforcer | None = None
        self.guard: RouteGuard | None = None
        self.rules: dict[tuple[str, str], tuple[object, CompiledRule | None]] = {}

    def rule(self, current: Enforcer, method: str, path: str) -> CompiledRule | None:
        """The view's limits and the policy's for ``method path``, as one rule."""
        if self.enforcer is not current:
            self.guard = _guard(self.owner, self.spec_of())
            self.rules = {}
            self.enforcer = current
        if self.guard is None:
            return None
        plan = current.plan
        found = self.rules.get((method, path))
        if found is not None and found[0] is plan:
            return found[1]
        rule = self.guard.rule(method, path)
        if len(self.rules) >= _MEMO_MAX:
            self.rules.clear()
        self.rules[(method, path)] = (plan, rule)
        return rule


def _guarded(
    request: HttpRequest, limits: _ViewLimits, call: Callable[..., Any], *args: Any, **kwargs: Any
) -> Any:
    current: Enforcer | None = _state.get("enforcer")
    if current is None:
        current = enforcer()
    if getattr(request, _DECIDED, False) or not _state["enabled"]:
        return call(request, *args, **kwargs)
    setattr(request, _DECIDED, True)
    view = view_from_environ(request.META, current.header_names)
    rule = limits.rule(current, view.method, view.path)
    ticket = current.admit(_with_request(view, request), rule)
    if ticket.answer is not None:
        return respond(ticket.answer)
    try:
        response = call(request, *args, **kwargs)
    except BaseException:
        current.complete(ticket, 500)
        raise
    return _finish(ticket, response, current)


def limit(
    *limits: str,
    key: KeyFunction | None = None,
    cost: int | CostFunction | None = None,
) -> Callable[[View], View]:
    """Decorate a function or class-based view: ``limits`` (names of the policy's limits or
    rates such as ``"5/minute"``, the view's own budget) counted per ``key(request)``, ``cost``
    units a request; both may be functions of Django's request."""
    return lambda view: _mark(view, RouteLimits(limits, key, cost))


def exempt(view: View) -> View:
    """Free a function or class-based view from every limit, the policy's included."""
    return _mark(view, RouteLimits(exempt=True))


def _mark(view: View, spec: RouteLimits) -> View:
    owner = _owner(view)
    if isinstance(view, type):
        setattr(view, _ATTRIBUTE, combine([view.__dict__.get(_ATTRIBUTE), spec]))
        dispatch = view.dispatch  # type: ignore[attr-defined]
        # Per class: a subclass may carry limits of its own.
        per_class: dict[type, _ViewLimits] = {}

        @functools.wraps(dispatch)
        def guarded_dispatch(self: Any, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            cls = type(self)
            limits = per_class.get(cls)
            if limits is None:
                limits = per_class[cls] = _ViewLimits(owner, lambda: getattr(cls, _ATTRIBUTE, None))
            return _guarded(request, limits, functools.partial(dispatch, self), *args, **kwargs)

        view.dispatch = guarded_dispatch  # type: ignore[attr-defined]
        return view

    @functools.wraps(view)
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        return _guarded(request, limits, view, *args, **kwargs)

    limits = _ViewLimits(owner, lambda: _limits_of(guarded))
    setattr(guarded, _ATTRIBUTE, combine([getattr(view, _ATTRIBUTE, None), spec]))
    return guarded  # type: ignore[return-value]


class RateKeeperMiddleware:
    """Decides each request before its view: the policy's limits for the path and the view's."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        enforcer()  # a setting that cannot work fails at start, with its key

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not _enabled():
            return self.get_response(request)
        try:
            view = resolve(request.path_info, getattr(request, "urlconf", None)).func
        except Resolver404:
            view = None
        if view is not None and _deferred(view):
            setattr(request, DEFERRED, True)
            response = self.get_response(request)
            ticket: Ticket | None = getattr(request, TICKET, None)
            return response if ticket is None else _finish(ticket, response)
        guard = (
            None
            if view is None
            else _guard(_owner(getattr(view, "view_class", view)), _limits_of(view))
        )
        ticket = admit(request, guard)
        if ticket.answer is not None:
            return respond(ticket.answer)
        setattr(request, _DECIDED, True)
        return _finish(ticket, self.get_response(request))
