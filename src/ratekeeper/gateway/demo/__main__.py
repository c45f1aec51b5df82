"""``python -m ratekeeper.gateway.demo [API...] [--port N]``: the demo APIs on their own.

A module of its own because it serves through ``ratekeeper.gateway.server``, which imports the
demo APIs: nothing imports this one, so no import circle.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ratekeeper.errors import GatewayConfigError
from ratekeeper.gateway.demo.apis import DEMOS, demo_app
from ratekeeper.gateway.server import run_app

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Serve demo APIs on their own (an upstream for ``serve --upstream`` or benchmarks)."""
    parser = argparse.ArgumentParser(
        prog="python -m ratekeeper.gateway.demo",
        description="Serve ratekeeper's demo APIs without any rate limiting.",
    )
    parser.add_argument("apis", nargs="*", metavar="API", help=f"any of {', '.join(DEMOS)}")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000, help="0 picks a free port")
    args = parser.parse_args(argv)
    try:
        app = demo_app(args.apis or tuple(DEMOS))
    except GatewayConfigError as exc:
        parser.error(str(exc))
    names = ", ".join(args.apis or DEMOS)
    return run_app(app, args.host, args.port, lambda url: f"demo API ({names}) on {url}")


if __name__ == "__main__":
    raise SystemExit(main())
