"""The ``ratekeeper`` command: ``ratekeeper serve|fetch|admin|top ...`` (see
``ratekeeper COMMAND --help``).

Subcommands import their modules only when run, so ``ratekeeper --help`` works without the
optional extras installed.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

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

# Each command's module, its entry point and the extra its imports need.
_COMMANDS = {
    "serve": ("ratekeeper.gateway.server", "serve_main", "http"),
    "admin": ("ratekeeper.gateway.admin.cli", "admin_main", "client"),
    "top": ("ratekeeper.gateway.admin.top", "top_main", "client"),
    "fetch": ("ratekeeper.client.fetch", "fetch_main", "client"),
}


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
    if command not in _COMMANDS:
        print(f"ratekeeper: unknown command {command!r}\n\n{_USAGE}", end="", file=sys.stderr)
        return 2
    module, function, extra = _COMMANDS[command]
    try:
        run: Callable[[list[str]], int] = getattr(importlib.import_module(module), function)
    except ImportError as exc:
        print(
            f"ratekeeper {command} needs the {extra} extra ({exc.name} is missing): "
            f"pip install 'ratekeeper[{extra}]'",
            file=sys.stderr,
        )
        return 2
    return run(rest)


if __name__ == "__main__":
    raise SystemExit(main())
