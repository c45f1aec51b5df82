"""Policies: load and validate a TOML policy (or a mapping) into a :class:`Policy`.

policy = load_policy("policy.toml")      # PolicyError names the file and key path

The provider compiles it for the hot path (``ratekeeper.http.compiled``); the client paces by it.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

from ratekeeper.errors import PolicyError
from ratekeeper.policy.builder import PolicyBuilder
from ratekeeper.policy.reader import parse_duration
from ratekeeper.policy.schema import Policy
from ratekeeper.policy.validate import policy_from_mapping

__all__ = [
    "Policy",
    "PolicyBuilder",
    "load_policy",
    "loads_policy",
    "parse_duration",
    "policy_from_mapping",
    "preset_path",
]


def loads_policy(text: str, source: str = "<string>") -> Policy:
    """Validate a policy given as TOML text; ``source`` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: not valid TOML: {exc}") from None
    return policy_from_mapping(data, source)


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the policy file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise PolicyError(f"{path}: expected a UTF-8 text file") from None
    return loads_policy(text, str(path))


def preset_path(name: str) -> Path:
    """The path of a shipped example policy (``musique``, ``beatpass``, ``radio``, ...)."""
    path = Path(str(resources.files("ratekeeper.policy") / "presets" / f"{name}.toml"))
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.toml"))
        raise PolicyError(f"no preset named {name!r}: expected one of {', '.join(known)}")
    return path
