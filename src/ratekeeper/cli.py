"""The ``ratekeeper`` command: ``ratekeeper serve ...`` and ``ratekeeper fetch ...`` (see
``ratekeeper COMMAND --help``).

Subcommands import their modules only when run, so ``ratekeeper --help`` works without the
optional extras installed.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ratekeeper._version import __version__

__all__ = ["main"]

_USAGE = """usage: ratekeeper [--version] COMMAND [options]

options:
  -V, --version   print the version and exit

commands:
  serve   enforce a policy's rate limits in front of an HTTP API (or a demo API)
  fetch   fetch URLs politely: paced and retried within the server's rate limits
  admin   operate a running gateway: keys, blocks, lockouts, near-limit callers, reload
  top     watch a running gateway live: requests, callers near their limits, store, policy

'ratekeeper COMMAND --help' describes a command's options.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_USAGE, end="")
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        print(f"ratekeeper {__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command == "serve":
        try:
            from ratekeeper.gateway.server import serve_main  # noqa: PLC0415 (extras)
        except ImportError as exc:
            print(
                f"ratekeeper serve needs the http extra ({exc.name} is missing): "
                "pip install 'ratekeeper[http]'",
                file=sys.stderr,
            )
            return 2
        return serve_main(rest)
    if command == "admin":
        try:
            from ratekeeper.gateway.admin.cli import admin_main  # noqa: PLC0415 (extras)
        except ImportError as exc:
            print(
                f"ratekeeper admin needs the client extra ({exc.name} is missing): "
                "pip install 'ratekeeper[client]'",
                file=sys.stderr,
            )
            return 2
        return admin_main(rest)
    if command == "top":
        try:
            from ratekeeper.gateway.admin.top import top_main  # noqa: PLC0415 (extras)
        except ImportError as exc:
            print(
                f"ratekeeper top needs the client extra ({exc.name} is missing): "
                "pip install 'ratekeeper[client]'",
                file=sys.stderr,
            )
            return 2
        return top_main(rest)
    if command == "fetch":
        try:
            from ratekeeper.client.fetch import fetch_main  # noqa: PLC0415 (extras)
        except ImportError as exc:
            print(
                f"ratekeeper fetch needs the client extra ({exc.name} is missing): "
                "pip install 'ratekeeper[client]'",
                file=sys.stderr,
            )
            return 2
        return fetch_main(rest)
    print(f"ratekeeper: unknown command {command!r}\n\n{_USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
