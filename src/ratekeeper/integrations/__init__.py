"""Framework integrations on the one enforcement core and policy model.

- :mod:`ratekeeper.integrations.fastapi`: ``RateKeeper(app, policy)``, ``limit(...)`` as a
  dependency or a decorator, ``exempt``, OpenAPI answers, WebSockets (FastAPI, Starlette).
- :mod:`ratekeeper.integrations.flask`: the ``RateKeeper`` extension, ``@rk.limit``,
  ``@rk.exempt`` on views and blueprints, ``RATEKEEPER_*`` configuration.
- :mod:`ratekeeper.integrations.django`: ``RateKeeperMiddleware``, the ``RATEKEEPER`` setting,
  ``limit``/``exempt`` view decorators, ``RateKeeperThrottle`` for Django REST framework.

Each needs its framework installed (``pip install 'ratekeeper[fastapi]'``, ``[flask]``,
``[django]``). None decides anything itself: a route's limits in code join the policy's in one
decision (:mod:`ratekeeper.http.route_limits`).
"""
