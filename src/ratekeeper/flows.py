"""The one driver of generator flows, sync and async.

Logic that needs I/O is written once as a generator that yields operations and receives their
results (the shape of httpx's ``auth_flow``): the enforcer's admission, the Redis store's
cross-slot protocol and the client's pacing and retry. A driver only carries the operations
out; :func:`drive` and :func:`drive_async` are the two, so no flow is ever written twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import TypeVar

__all__ = ["drive", "drive_async"]

Op = TypeVar("Op")
Reply = TypeVar("Reply")
Result = TypeVar("Result")


def drive(flow: Generator[Op, Reply, Result], run: Callable[[Op], Reply]) -> Result:
    """Run ``flow`` to its end, answering each operation with ``run(op)``."""
    try:
        op = next(flow)
        while True:
            op = flow.send(run(op))
    except StopIteration as stop:
        result: Result = stop.value
        return result


async def drive_async(
    flow: Generator[Op, Reply, Result], run: Callable[[Op], Awaitable[Reply]]
) -> Result:
    """Run ``flow`` to its end, answering each operation with ``await run(op)``."""
    try:
        op = next(flow)
        while True:
            op = flow.send(await run(op))
    except StopIteration as stop:
        result: Result = stop.value
        return result
