"""A Flask app for the integration tests (imported by the tests and by gunicorn)."""

from __future__ import annotations

import os

from flask import Blueprint, Flask

from ratekeeper.integrations.flask import RateKeeper

POLICY = {
    "store": "memory://",
    "apply": ["api"],
    "identity": {"source": "api_key", "anonymous": "reject"},
    "limits": {"api": {"rates": "100/minute"}, "media": {"rates": "5/minute"}},
}

rk = RateKeeper()
admin = Blueprint("admin", __name__, url_prefix="/admin")
public = Blueprint("public", __name__, url_prefix="/public")
tenants = Blueprint("tenants", __name__, url_prefix="/tenants")


@admin.get("/stats")
def stats() -> dict[str, bool]:
    return {"ok": True}


@public.get("/page")
def page() -> dict[str, bool]:
    return {"ok": True}


@tenants.get("/report")
@rk.limit("2/minute", key=lambda r: r.args.get("user"))
def report() -> dict[str, bool]:
    return {"ok": True}


rk.limit("2/minute")(admin)
rk.exempt(public)
rk.limit("3/minute", key=lambda r: r.headers.get("X-Tenant"))(tenants)


def create_app(store: str | None = None) -> Flask:
    """The app; ``store`` (or RATEKEEPER_TEST_STORE) overrides the policy's memory store."""
    app = Flask(__name__)
    app.config["RATEKEEPER_POLICY"] = POLICY
    app.config["RATEKEEPER_STORE"] = store or os.environ.get("RATEKEEPER_TEST_STORE")
    rk.init_app(app)

    @app.get("/plain")
    def plain() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/media")
    @rk.limit("media")
    def media() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/search")
    @rk.limit("2/minute", key=lambda r: r.args.get("user"), cost=lambda r: int(r.args.get("n", 1)))
    def search() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/health")
    @rk.exempt
    def health() -> str:
        return "ok"

    @app.get("/fail")
    def fail() -> str:
        raise RuntimeError("boom")

    app.register_blueprint(admin)
    app.register_blueprint(public)
    app.register_blueprint(tenants)
    return app


app = create_app() if os.environ.get("RATEKEEPER_TEST_STORE") else None
