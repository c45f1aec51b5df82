"""Marks for how scripts/test.sh schedules the suite.

Tests that assert a client's wall-clock pace against the theoretical minimum (within 5-15%)
are marked ``realtime``: scripts/test.sh runs them on their own, one at a time, after the rest
has run in parallel, so no other test competes with them for the two cores. A test elsewhere
that needs the same can say ``@pytest.mark.realtime``.
"""

from __future__ import annotations

import pytest

# The modules whose tests time a client against its pace bound or a burst of refusals.
REALTIME_MODULES = frozenset(
    {
        "test_client_gateway.py",
        "test_client_learning.py",
        "test_client_refusals.py",
        "test_client_requests.py",
        "test_client_servers.py",
        "test_recipes.py",
        "test_seed_conformance.py",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests of :data:`REALTIME_MODULES` ``realtime``."""
    for item in items:
        if item.path.name in REALTIME_MODULES:
            item.add_marker(pytest.mark.realtime)
