"""The ``ratekeeper serve`` gateway: a policy's limits in front of any HTTP API, with no code.

- :mod:`ratekeeper.gateway.app`: the ASGI app (limits, proxy or demo, decision endpoint,
  ``/healthz``, ``/metrics``) and its settings.
- :mod:`ratekeeper.gateway.proxy`: the streaming reverse proxy (aiohttp upstream client).
- :mod:`ratekeeper.gateway.decide`: the decision endpoint for nginx, Traefik and Envoy.
- :mod:`ratekeeper.gateway.demo`: the demo APIs of the five presets.
- :mod:`ratekeeper.gateway.metrics`: ``/metrics`` summed over several worker processes.
- :mod:`ratekeeper.gateway.server`: the command line and uvicorn.
"""
