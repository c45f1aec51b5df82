"""Built-in demo APIs, one per preset, so ``ratekeeper serve --preset NAME`` can be tried with curl.

The APIs are in :mod:`ratekeeper.gateway.demo.apis`. Run them as a stand-alone upstream (for
``serve --upstream`` or a benchmark), with no rate limiting::

    python -m ratekeeper.gateway.demo radio --port 9000
"""

from ratekeeper.gateway.demo.apis import DEMOS, demo_app, try_paths

__all__ = ["DEMOS", "demo_app", "try_paths"]
