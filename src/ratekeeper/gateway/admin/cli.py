"""``ratekeeper admin``: the admin API from the command line (httpx).

Keys are hashed here, before anything is sent: the gateway's admin API only ever sees a key's
digest. Give a key as ``-`` to read it from standard input (kept out of the shell history and
the process list), or its digest with ``--hash``. The gateway is ``--url`` (default
``$RATEKEEPER_ADMIN_URL``, else ``http://127.0.0.1:9090``) or ``--unix PATH``; the token is
``$RATEKEEPER_ADMIN_TOKEN`` (or ``--token``). Answers are printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import httpx

from ratekeeper.policy import parse_duration
from ratekeeper.stores.registry.model import key_digest

__all__ = ["DEFAULT_ADMIN_URL", "admin_main"]

DEFAULT_ADMIN_URL = "http://127.0.0.1:9090"


def _duration(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}, got {text!r}") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"a duration above 0, got {text!r}")
    return seconds


def listener_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options naming the admin listener and its token (``ratekeeper admin`` and
    ``ratekeeper top`` take the same)."""
    parser.add_argument("--url", default=os.environ.get("RATEKEEPER_ADMIN_URL", DEFAULT_ADMIN_URL))
    parser.add_argument("--unix", metavar="PATH", help="the admin listener's unix socket")
    parser.add_argument("--token", default=os.environ.get("RATEKEEPER_ADMIN_TOKEN", ""))


def listener_client(args: argparse.Namespace, timeout: float) -> tuple[httpx.Client, str]:
    """A client of the admin listener the options name (sending the token, if any), and the
    base URL of its requests."""
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    transport = httpx.HTTPTransport(uds=args.unix) if args.unix else None
    base = "http://admin" if args.unix else args.url.rstrip("/")
    return httpx.Client(transport=transport, timeout=timeout, headers=headers), base


def _key_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("key", nargs="?", help="the API key ('-': read it from standard input)")
    group.add_argument("--hash", dest="digest", help="the key's digest instead of the key")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ratekeeper admin",
        description="Operate a running ratekeeper serve through its admin listener (--admin).",
    )
    listener_arguments(parser)
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS")
    commands = parser.add_subparsers(dest="command", required=True)

    keys = commands.add_parser("keys", help="known keys").add_subparsers(
        dest="action", required=True
    )
    keys.add_parser("list", help="every key the registry knows")
    _key_arguments(keys.add_parser("hash", help="print a key's digest (nothing is sent)"))
    add = keys.add_parser("add", help="add or change a key (label, plan, account)")
    _key_arguments(add)
    add.add_argument("--label")
    add.add_argument("--plan", help="a plan of the policy ([plans.NAME])")
    add.add_argument("--account", help="the account whose budget the key shares")
    show = keys.add_parser("show", help="a key's limits, plan, account, lockout, blocks")
    _key_arguments(show)
    show.add_argument("--address", help="also the limits counted for this address")
    _key_arguments(keys.add_parser("remove", help="forget a key added at run time"))
    reset = keys.add_parser("reset", help="start every limit of the key afresh")
    _key_arguments(reset)
    reset.add_argument("--address", help="also the limits counted for this address")

    block = commands.add_parser("block", help="refuse a key, address or network (403)")
    block.add_argument("kind", choices=["key", "address", "network"])
    block.add_argument("value", nargs="?", help="the key ('-': stdin), address or network")
    block.add_argument("--hash", dest="digest", help="with kind key: the key's digest")
    block.add_argument(
        "--for", dest="for_s", type=_duration, help="e.g. 1h (default: until lifted)"
    )
    block.add_argument("--reason", default="")
    unblock = commands.add_parser("unblock", help="lift a block")
    unblock.add_argument("kind", choices=["key", "address", "network"])
    unblock.add_argument("value", nargs="?")
    unblock.add_argument("--hash", dest="digest")
    commands.add_parser("blocks", help="every block in force")

    lockout = commands.add_parser("lockout", help="auth lockouts").add_subparsers(
        dest="action", required=True
    )
    lift = lockout.add_parser("lift", help="lift a key's or an address's lockout")
    lift.add_argument("key", nargs="?", help="the API key ('-': stdin)")
    lift.add_argument("--hash", dest="digest")
    lift.add_argument("--address")

    near = commands.add_parser("near", help="the callers nearest their limits, per limit")
    near.add_argument("--top", type=int, default=10)

    policy = commands.add_parser("policy", help="the running policy").add_subparsers(
        dest="action", required=True
    )
    policy.add_parser("show", help="source, generation, limits, plans")
    policy.add_parser("reload", help="reload the policy file (a broken one is refused)")
    return parser


def _digest(args: argparse.Namespace, value: str | None) -> str | None:
    if getattr(args, "digest", None):
        return str(args.digest)
    if value is None:
        return None
    if value == "-":
        value = sys.stdin.readline().strip()
        if not value:
            raise SystemExit("ratekeeper admin: no key on standard input")
    return key_digest(value)


def _request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None, dict[str, str]]:
    """The admin API call for the parsed command: method, path, JSON body, query."""
    command, action = args.command, getattr(args, "action", None)
    if command == "keys":
        digest = _digest(args, args.key) if action != "list" else None
        if action == "list":
            return "GET", "/admin/keys", None, {}
        if action == "add":
            body = {"hash": digest, "label": args.label, "plan": args.plan, "account": args.account}
            return "POST", "/admin/keys", {k: v for k, v in body.items() if v}, {}
        address = {"address": args.address} if getattr(args, "address", None) else {}
        if action == "show":
            return "GET", f"/admin/keys/{digest}", None, address
        if action == "remove":
            return "DELETE", f"/admin/keys/{digest}", None, {}
        return "POST", f"/admin/keys/{digest}/reset", None, address
    if command == "block":
        value = _digest(args, args.value) if args.kind == "key" else args.value
        body = {"kind": args.kind, "value": value, "reason": args.reason}
        if args.for_s is not None:
            body["for_s"] = args.for_s
        return "POST", "/admin/blocks", body, {}
    if command == "unblock":
        value = _digest(args, args.value) if args.kind == "key" else args.value
        return "DELETE", "/admin/blocks", None, {"kind": args.kind, "value": value or ""}
    if command == "blocks":
        return "GET", "/admin/blocks", None, {}
    if command == "lockout":
        body = {"hash": _digest(args, args.key), "address": args.address}
        return "POST", "/admin/lockouts/lift", {k: v for k, v in body.items() if v}, {}
    if command == "near":
        return "GET", "/admin/near-limits", None, {"top": str(args.top)}
    if action == "reload":
        return "POST", "/admin/policy/reload", None, {}
    return "GET", "/admin/policy", None, {}


def admin_main(argv: Sequence[str] | None = None) -> int:
    """The ``ratekeeper admin`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "keys" and args.action == "hash":
        print(_digest(args, args.key))
        return 0
    method, path, body, query = _request(args)
    client, base = listener_client(args, args.timeout)
    try:
        with client:
            response = client.request(method, base + path, json=body, params=query)
    except httpx.HTTPError as exc:
        where = args.unix or args.url
        print(f"ratekeeper admin: cannot reach {where}: {exc}", file=sys.stderr)
        return 2
    try:
        data = response.json()
    except ValueError:
        print(f"ratekeeper admin: {response.status_code}: not a JSON answer", file=sys.stderr)
        return 1
    if response.status_code >= 400:
        print(f"ratekeeper admin: {response.status_code}: {data.get('message')}", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2))
    return 0
