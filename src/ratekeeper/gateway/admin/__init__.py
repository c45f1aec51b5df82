"""The operator's side of a running gateway.

- :mod:`ratekeeper.gateway.admin.operator`: the tasks (inspect, reset, block, lift lockouts,
  near-limit lists), free of HTTP;
- :mod:`ratekeeper.gateway.admin.api`: the admin API serving them as JSON under ``/admin/``;
- :mod:`ratekeeper.gateway.admin.cli`: ``ratekeeper admin``, the same over httpx;
- :mod:`ratekeeper.gateway.admin.live`, :mod:`~ratekeeper.gateway.admin.page`: the live page
  (``/``) and the snapshot it polls (``/admin/live``);
  :mod:`~ratekeeper.gateway.admin.top`: ``ratekeeper top``, the same in a terminal;
- :mod:`ratekeeper.gateway.admin.origin`: other web sites kept out of the admin listener.
"""
