"""mkdocs hooks: the API reference written from the public names, a warning (a failure under
``--strict``) for each public name or method without a docstring, and pages added to the docs
folder listed in the navigation even before someone edits ``mkdocs.yml``.

Also a griffe extension (:class:`SphinxRoles`, named in ``mkdocs.yml``): the docstrings use
Sphinx roles (``:class:`~ratekeeper.stores.base.Store```), shown as code that links to the
object when the reference renders it."""

from __future__ import annotations

import enum
import functools
import importlib
import inspect
import logging
import re
from pathlib import Path
from typing import Any

import griffe

log = logging.getLogger("mkdocs.plugins.ratekeeper")

# The packages whose ``__all__`` is the public API, in the order the reference shows them.
PUBLIC = ("ratekeeper", "ratekeeper.client")
# Modules of the framework integrations, rendered from their source (griffe) rather than
# imported: Django and DRF cannot be imported without a configured project.
INTEGRATIONS = ("fastapi", "flask", "django", "drf")
MARKER = "<!-- public-api -->"

# Reference sections by the area of the defining module (ratekeeper.<area>....).
AREAS = {
    "stores": "Stores",
    "policy": "Policies",
    "http": "HTTP: middleware and answers",
    "gateway": "The gateway",
    "client": "The client",
    "frameworks": "Framework integrations",
    "integrations": "Framework integrations",
    "errors": "Errors",
}

# Where pages that are not in mkdocs.yml's nav go, by folder (or "" for the top level).
SECTIONS = {"frameworks": "Frameworks", "reference": "Reference", "": "Guides"}


def public_objects() -> list[tuple[str, str, Any]]:
    """``(public name, defining path for mkdocstrings, object)`` for every public name."""
    seen: set[int] = set()
    found = []
    for package in PUBLIC:
        module = importlib.import_module(package)
        for name in module.__all__:
            obj = getattr(module, name)
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            found.append((name, defining_path(package, name, obj), obj))
    return found


def defining_path(package: str, name: str, obj: Any) -> str:
    """The dotted path mkdocstrings should render: where ``obj`` is defined when it says so,
    else its name in ``package`` (type aliases and constants)."""
    owner = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if (
        isinstance(owner, str)
        and owner.startswith("ratekeeper")
        and qualname == getattr(obj, "__name__", None)
        and (inspect.isclass(obj) or inspect.isfunction(obj))
    ):
        return f"{owner}.{qualname}"
    return f"{package}.{name}"


def undocumented(name: str, obj: Any) -> list[str]:
    """What of ``obj`` lacks a docstring: the object itself and its public methods."""
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        return []
    missing = []
    doc = obj.__doc__ or ""
    # A dataclass without a docstring gets its signature as one.
    if not doc.strip() or doc.startswith(f"{obj.__name__}("):
        missing.append(name)
    if inspect.isclass(obj) and not issubclass(obj, enum.Enum | BaseException):
        for member, value in vars(obj).items():
            if member.startswith("_"):
                continue
            func = value.__func__ if isinstance(value, classmethod | staticmethod) else value
            if isinstance(func, property):
                func = func.fget
            if inspect.isfunction(func) and not (func.__doc__ or "").strip():
                missing.append(f"{name}.{member}")
    return missing


@functools.cache
def _source_package() -> Any:
    """The ratekeeper package as griffe reads it from source, read once."""
    src = Path(__file__).parent.parent / "src"
    return griffe.load("ratekeeper", search_paths=[str(src)], resolve_aliases=False)


def undocumented_in_source(module_path: str) -> list[str]:
    """:func:`undocumented` for a module read from its source (the integrations)."""
    module = _source_package()[module_path.removeprefix("ratekeeper.")]
    missing = []
    for name in module.exports or []:
        obj = module.members.get(str(name))
        if obj is None or obj.is_alias or not (obj.is_class or obj.is_function):
            continue
        if not obj.docstring:
            missing.append(f"{module_path}.{name}")
        if obj.is_class:
            missing += [
                f"{module_path}.{name}.{member}"
                for member, value in obj.members.items()
                if not member.startswith("_")
                and not value.is_alias
                and value.is_function
                and not value.docstring
            ]
    return missing


def integration_modules() -> list[str]:
    """The integration modules there are, as dotted paths."""
    folder = Path(__file__).parent.parent / "src" / "ratekeeper" / "integrations"
    return [
        f"ratekeeper.integrations.{name}"
        for name in INTEGRATIONS
        if (folder / f"{name}.py").is_file()
    ]


def reference_markdown() -> str:
    """The reference: one ``:::`` block per public name, grouped by area."""
    groups: dict[str, list[str]] = {}
    for _name, path, _obj in public_objects():
        parts = path.split(".")
        area = AREAS.get(parts[1], "The core") if len(parts) > 2 else "The core"
        groups.setdefault(area, []).append(f"::: {path}\n    options:\n      heading_level: 3\n")
    for module in integration_modules():
        groups.setdefault("Framework integrations", []).append(
            f"::: {module}\n    options:\n      heading_level: 3\n"
        )
    order = ["The core", *dict.fromkeys(AREAS.values())]
    return "\n".join(f"## {area}\n\n" + "\n".join(groups[area]) for area in order if area in groups)


def on_config(config: Any) -> Any:
    """Check the public docstrings; list pages missing from the nav at the end of their
    section."""
    missing = [what for name, _path, obj in public_objects() for what in undocumented(name, obj)]
    missing += [what for module in integration_modules() for what in undocumented_in_source(module)]
    for what in missing:
        log.warning("public name without a docstring: %s", what)
    docs = Path(config["docs_dir"])
    listed = set(_nav_files(config["nav"]))
    for page in sorted(docs.rglob("*.md")):
        relative = page.relative_to(docs).as_posix()
        if relative in listed:
            continue
        folder = relative.split("/")[0] if "/" in relative else ""
        section = SECTIONS.get(folder)
        if section is None:
            continue
        _section(config["nav"], section).append(relative)
    return config


def _nav_files(nav: Any) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [f for item in nav for f in _nav_files(item)]
    if isinstance(nav, dict):
        return [f for value in nav.values() for f in _nav_files(value)]
    return []


def _section(nav: list[Any], title: str) -> list[Any]:
    for item in nav:
        if isinstance(item, dict) and title in item:
            entries: list[Any] = item[title]
            return entries
    entries = []
    nav.insert(-2, {title: entries})
    return entries


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """Write the public API where the reference page asks for it."""
    if MARKER in markdown:
        return markdown.replace(MARKER, reference_markdown())
    return markdown


_ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj):`(~?)([^`]+)`")


@functools.cache
def _public_paths() -> dict[str, str]:
    """Public name -> the path the reference renders it under."""
    return {name: path for name, path, _obj in public_objects()}


def _role(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    shown = target.rsplit(".", 1)[-1] if tilde else target
    paths = _public_paths()
    head, _, rest = target.partition(".")
    if head == "ratekeeper" and rest in paths:
        identifier = paths[rest]  # ratekeeper.Limiter: where the reference shows it
    elif head in paths:
        identifier = paths[head] + (f".{rest}" if rest else "")  # Limiter.hit
    else:
        identifier = target
    # optional: a target the reference does not render is shown as code, without a warning.
    return f'<autoref identifier="{identifier}" optional><code>{shown}</code></autoref>'


class SphinxRoles(griffe.Extension):
    """Sphinx roles in docstrings rendered as (optional) cross-references."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite the roles of each object's docstring as it is loaded."""
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_role, obj.docstring.value)
