"""Flask: the ``RateKeeper`` extension, configured from ``app.config``.

    from flask import Flask, request
    from ratekeeper.integrations.flask import RateKeeper

    app = Flask(__name__)
    app.config["RATEKEEPER_POLICY"] = "policy.toml"    # a path, a Policy or a dict of TOML tables
    rk = RateKeeper(app)                                # or rk = RateKeeper(); rk.init_app(app)

    @app.get("/search")
    @rk.limit("5/minute", key=lambda request: request.args.get("user"))
    def search() -> str: ...

    @app.get("/health")
    @rk.exempt
    def health() -> str: ...

Configuration: ``RATEKEEPER_POLICY`` (required), ``RATEKEEPER_STORE`` (a store URL instead of
the policy's), ``RATEKEEPER_ENABLED`` (``False`` turns every check off, for tests).
``rk.limit(...)`` and ``rk.exempt`` also take a blueprint: its every view gets the limits. Each
request is one decision (the policy's limits for the path and its view's), made before the
view; key and cost functions get Flask's ``request``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from flask import Blueprint, Flask, Request, Response, current_app, request

from ratekeeper.errors import PolicyError
from ratekeeper.http.compiled import CompiledRule
from ratekeeper.http.engine import Enforcer
from ratekeeper.http.flow import Ticket
from ratekeeper.http.identity import RequestView
from ratekeeper.http.route_limits import (
    CostFunction,
    KeyFunction,
    RouteGuard,
    RouteLimits,
    combine,
    together,
)
from ratekeeper.http.workers import warn_if_split
from ratekeeper.http.wsgi_environ import view_from_environ
from ratekeeper.policy import Policy, load_policy, policy_from_mapping

__all__ = ["RateKeeper"]

Target = TypeVar("Target", bound=Callable[..., Any] | Blueprint)
_ATTRIBUTE = "_ratekeeper_limits"
_TICKET = "ratekeeper.ticket"
_MEMO_MAX = 8192


def _policy_of(value: object) -> Policy:
    if isinstance(value, Policy):
        return value
    if isinstance(value, Mapping):
        return policy_from_mapping(value, "app.config['RATEKEEPER_POLICY']")
    if isinstance(value, str) or hasattr(value, "__fspath__"):
        return load_policy(value)  # type: ignore[arg-type]
    raise PolicyError(
        "app.config['RATEKEEPER_POLICY']: expected a policy file's path, a Policy or a dict of "
        f"policy tables, got {value!r}"
    )


class _AppState:
    """One app's enforcer and the guards of its views."""

    def __init__(self, enforcer: Enforcer, enabled: bool) -> None:
        self.enforcer = enforcer
        self.enabled = enabled
        self.guards: dict[str, tuple[RouteGuard, ...]] = {}
        # (endpoint, method, path) -> (the plan, its one rule for them; None: the policy's alone)
        self.rules: dict[tuple[str, str, str], tuple[object, CompiledRule | None]] = {}


class RateKeeper:
    """The Flask extension; ``app`` may be given now or later to :meth:`init_app`."""

    def __init__(self, app: Flask | None = None) -> None:
        self._blueprints: dict[str, RouteLimits] = {}
        if app is not None:
            self.init_app(app)

    def __repr__(self) -> str:
        return f"<RateKeeper blueprints={sorted(self._blueprints)}>"

    def init_app(self, app: Flask) -> None:
        """Read ``RATEKEEPER_*`` from ``app.config`` and check every request of ``app``."""
        config = app.config
        if "RATEKEEPER_POLICY" not in config:
            raise PolicyError("app.config['RATEKEEPER_POLICY']: expected a policy (missing)")
        policy = _policy_of(config["RATEKEEPER_POLICY"])
        enforcer = Enforcer(policy, store=config.get("RATEKEEPER_STORE"))
        state = _AppState(enforcer, bool(config.get("RATEKEEPER_ENABLED", True)))
        app.extensions["ratekeeper"] = state
        # Bound to this app's state: no lookup of the current app on each request.
        app.before_request(lambda: self._before(app, state))
        app.after_request(lambda response: self._after(state, response))
        app.teardown_request(lambda exc: self._teardown(state))
        warn_if_split(enforcer.store, f"Flask app {app.name!r}")

    def enforcer(self, app: Flask | None = None) -> Enforcer:
        """The enforcer of ``app`` (the current app by default)."""
        return self._state(app or current_app).enforcer

    def limit(
        self,
        *limits: str,
        key: KeyFunction | None = None,
        cost: int | CostFunction | None = None,
    ) -> Callable[[Target], Target]:
        """Decorate a view or mark a blueprint: ``limits`` (names of the policy's limits or
        rates such as ``"5/minute"``, a budget of the view's own) counted per ``key(request)``,
        ``cost`` units a request; both may be functions of Flask's ``request``."""
        spec = RouteLimits(limits, key, cost)
        return lambda target: self._mark(target, spec)

    def exempt(self, target: Target) -> Target:
        """Free a view or a blueprint from every limit, the policy's included."""
        return self._mark(target, RouteLimits(exempt=True))

    def _mark(self, target: Target, spec: RouteLimits) -> Target:
        if isinstance(target, Blueprint):
            self._blueprints[target.name] = combine([self._blueprints.get(target.name), spec])  # type: ignore[assignment]
        else:
            setattr(target, _ATTRIBUTE, combine([getattr(target, _ATTRIBUTE, None), spec]))
        return target

    @staticmethod
    def _state(app: Flask) -> _AppState:
        state = app.extensions.get("ratekeeper")
        if state is None:
            raise PolicyError("RateKeeper: call init_app(app) before the first request")
        return state  # type: ignore[no-any-return]

    def _guards(
        self, app: Flask, state: _AppState, endpoint: str, blueprints: list[str]
    ) -> tuple[RouteGuard, ...]:
        """The view's limits and each of its blueprints', a budget (and key) of their own."""
        guards = state.guards.get(endpoint)
        if guards is not None:
            return guards
        view = app.view_functions.get(endpoint)
        declared = [
            (endpoint, getattr(view, _ATTRIBUTE, None)),
            (endpoint, getattr(getattr(view, "view_class", None), _ATTRIBUTE, None)),
            *((f"{endpoint}@{name}", self._blueprints.get(name)) for name in blueprints),
        ]
        owners: dict[str, RouteLimits] = {}
        for owner, spec in declared:
            if spec is not None:
                owners[owner] = combine([owners.get(owner), spec])  # type: ignore[assignment]
        if any(spec.exempt for spec in owners.values()):
            owners = {endpoint: RouteLimits(exempt=True)}
        guards = tuple(RouteGuard(state.enforcer, o, spec) for o, spec in owners.items())
        state.guards[endpoint] = guards
        return guards

    def _rule(
        self, app: Flask, state: _AppState, req: Request, view: RequestView
    ) -> CompiledRule | None:
        """The one rule of the view's limits and the policy's, made once per plan and path."""
        endpoint = req.endpoint
        if endpoint is None:
            return None
        plan = state.enforcer.plan
        probe = (endpoint, view.method, view.path)
        found = state.rules.get(probe)
        if found is not None and found[0] is plan:
            return found[1]
        guards = self._guards(app, state, endpoint, req.blueprints)
        rule = together([g.rule(view.method, view.path) for g in guards]) if guards else None
        if len(state.rules) >= _MEMO_MAX:
            state.rules.clear()
        state.rules[probe] = (plan, rule)
        return rule

    def _before(self, app: Flask, state: _AppState) -> Response | None:
        if not state.enabled:
            return None
        enforcer = state.enforcer
        req: Request = request._get_current_object()  # type: ignore[attr-defined]
        view = view_from_environ(req.environ, enforcer.header_names)
        rule = self._rule(app, state, req, view)
        ticket = enforcer.admit(
            RequestView(view.method, view.path, view.headers, view.peer, view.query, req), rule
        )
        answer = ticket.answer
        if answer is not None:
            return Response(answer.body, answer.status, headers=answer.headers)
        req.environ[_TICKET] = ticket
        return None

    def _after(self, state: _AppState, response: Response) -> Response:
        ticket: Ticket | None = request.environ.pop(_TICKET, None)
        if ticket is not None:
            headers = response.headers
            for name, value in ticket.headers:
                headers[name] = value
            state.enforcer.complete(ticket, response.status_code)
        return response

    def _teardown(self, state: _AppState) -> None:
        # A view that raised never reached after_request: its answer is a 500.
        ticket: Ticket | None = request.environ.pop(_TICKET, None)
        if ticket is not None:
            state.enforcer.complete(ticket, 500)
