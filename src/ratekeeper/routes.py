"""Route patterns compiled into a segment tree: matching walks path segments, no regex.

Shared by the provider (a policy's rules, in ``ratekeeper.http.compiled``) and the consumer
(a host's paced routes, in ``ratekeeper.client.pacing``), so it sits below both.

Patterns: ``/v1/station`` (exact), ``/v1/shows/{id}`` (one segment), ``/v1/media/*`` (the prefix
itself and anything below). When several rules match, the one written first wins. Answers are
memoised per (method, path) in a bounded dict, so repeated paths cost one lookup.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

__all__ = ["RouteTable"]

T = TypeVar("T")
_MEMO_MAX = 8192


class _Node:
    __slots__ = ("children", "ends", "param", "rest")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.param: _Node | None = None
        # (rule index, methods or None for all) for patterns ending here / with "*" here.
        self.ends: list[tuple[int, frozenset[str] | None]] = []
        self.rest: list[tuple[int, frozenset[str] | None]] = []


def _split(path: str) -> list[str]:
    return [s for s in path.split("/") if s]


class RouteTable(Generic[T]):
    """Maps (method, path) to the first matching value, or ``default``."""

    def __init__(
        self, entries: Iterable[tuple[Iterable[str], frozenset[str] | None, T]], default: T
    ) -> None:
        self._root = _Node()
        self._values: list[T] = []
        self.default = default
        self._memo: dict[tuple[str, str], T] = {}
        for index, (patterns, methods, value) in enumerate(entries):
            self._values.append(value)
            for pattern in patterns:
                self._add(pattern, methods, index)

    def _add(self, pattern: str, methods: frozenset[str] | None, index: int) -> None:
        node = self._root
        segments = _split(pattern)
        for position, segment in enumerate(segments):
            if segment == "*" and position == len(segments) - 1:
                node.rest.append((index, methods))
                return
            if segment.startswith("{") and segment.endswith("}"):
                if node.param is None:
                    node.param = _Node()
                node = node.param
            else:
                node = node.children.setdefault(segment, _Node())
        node.ends.append((index, methods))

    def match(self, method: str, path: str) -> T:
        """The value of the first rule whose pattern and methods match, else ``default``."""
        probe = (method, path)
        found = self._memo.get(probe)
        if found is not None:
            return found
        best = self._walk(self._root, _split(path), 0, method, len(self._values))
        value = self._values[best] if best < len(self._values) else self.default
        memo = self._memo
        if len(memo) >= _MEMO_MAX:
            memo.clear()
        memo[probe] = value
        return value

    def _walk(self, node: _Node, segments: list[str], position: int, method: str, best: int) -> int:
        for index, methods in node.rest:
            if index < best and (methods is None or method in methods):
                best = index
        if position == len(segments):
            for index, methods in node.ends:
                if index < best and (methods is None or method in methods):
                    best = index
            return best
        child = node.children.get(segments[position])
        if child is not None:
            best = self._walk(child, segments, position + 1, method, best)
        if node.param is not None:
            best = self._walk(node.param, segments, position + 1, method, best)
        return best
