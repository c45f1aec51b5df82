"""The public API is exported in one place, sorted, and every export resolves."""

import inspect
import subprocess
import sys

import pytest

import ratekeeper


def test_all_is_sorted_and_every_name_resolves() -> None:
    names = ratekeeper.__all__
    assert names == sorted(names)
    for name in names:
        assert getattr(ratekeeper, name) is not None


def test_public_members_are_exported() -> None:
    public = {
        name
        for name, value in vars(ratekeeper).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("ratekeeper")
    }
    assert public <= set(ratekeeper.__all__)


def test_every_export_has_a_docstring() -> None:
    for name in ratekeeper.__all__:
        value = getattr(ratekeeper, name)
        if isinstance(value, type) or inspect.isfunction(value):
            assert (value.__doc__ or "").strip(), name


def test_importing_the_package_imports_no_extra() -> None:
    code = (
        "import sys, ratekeeper; "
        "print(sorted(m for m in ('httpx', 'redis', 'starlette', 'fastapi', 'aiohttp', "
        "'ratekeeper.http.engine', 'ratekeeper.gateway.app') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("name", "dependency", "extra"),
    [
        ("RedisStore", "redis", "redis"),
        ("RateLimitTransport", "httpx", "client"),
        ("RateLimit", "starlette", "fastapi"),
        ("Gateway", "aiohttp", "http"),
    ],
)
def test_a_missing_extra_names_the_pip_command(
    monkeypatch: pytest.MonkeyPatch, name: str, dependency: str, extra: str
) -> None:
    lazy = ("ratekeeper.stores.redis", "ratekeeper.client", "ratekeeper.http", "ratekeeper.gateway")
    for module in [m for m in sys.modules if m.startswith((dependency, *lazy))]:
        monkeypatch.delitem(sys.modules, module)
    # None in sys.modules makes `import dependency` fail as if it were not installed.
    monkeypatch.setitem(sys.modules, dependency, None)
    monkeypatch.delitem(vars(ratekeeper), name, raising=False)
    # The Redis store says it itself, as a StoreError; the others through the package.
    with pytest.raises(
        (ImportError, ratekeeper.StoreError), match=rf"pip install 'ratekeeper\[{extra}\]'"
    ):
        getattr(ratekeeper, name)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        ratekeeper.Nope  # noqa: B018
