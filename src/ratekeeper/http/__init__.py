"""In-process enforcement: a compiled policy, the stages of admission, the middlewares.

The public names are exported from :mod:`ratekeeper` (``RateLimitMiddleware``,
``RateLimitWSGIMiddleware``, ``Enforcer``, ``compile_policy``, ``CompiledPolicy``,
``RequestView``); ``docs/architecture.md`` shows which module holds what.
"""
