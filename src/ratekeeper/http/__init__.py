"""In-process enforcement: identify, match rules, decide, answer (ASGI, WSGI, FastAPI).

Import from the submodules: :mod:`ratekeeper.http.asgi` (``RateLimitMiddleware``),
:mod:`ratekeeper.http.wsgi` (``RateLimitWSGIMiddleware``), :mod:`ratekeeper.http.engine`
(``Enforcer``), :mod:`ratekeeper.http.fastapi` (``RateLimit`` dependency) and
:mod:`ratekeeper.http.metrics`.
"""
