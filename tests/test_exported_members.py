"""The public API is exported in one place, sorted, and every export resolves."""

import inspect

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
