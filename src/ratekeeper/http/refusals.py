"""One structured log line per refusal, and one per caller per window under a flood.

:class:`RefusalLog` writes to the ``ratekeeper.refusals`` logger at INFO: the message is a
``key=value`` line for text logs, and the same fields ride on the record as ``fields`` for a
JSON formatter (``ratekeeper serve --log-format json``). Fields: ``status``, ``rule``, ``zone``
(the limit or the refusal's reason), ``key`` (the registry label, else ``k:`` and the first 8
hex digits of the key's digest; never the key), ``address``, ``retry_after_s``, ``count``.

A caller refused again within the window of its last line adds to a count instead of a line;
the next line for that caller (or :meth:`flush`, run every second by the gateway) carries the
count of the refusals it stands for. At most ``max_callers`` callers are tracked at once; past
that, the oldest windows are flushed early.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

__all__ = ["RefusalLog"]

log = logging.getLogger("ratekeeper.refusals")

# A refusal's caller (key, address, zone) and the fields of its line.
Entry = tuple[tuple[str, str, str], dict[str, Any]]
# The shortest and longest window one line stands for, in seconds.
_MIN_WINDOW_S = 1.0
_MAX_WINDOW_S = 60.0


class RefusalLog:
    """Refusal lines, deduplicated per caller and zone for the refusal's retry window."""

    __slots__ = ("_lock", "_windows", "logger", "max_callers")

    def __init__(self, logger: logging.Logger = log, *, max_callers: int = 10_000) -> None:
        self.logger = logger
        self.max_callers = max_callers
        # (key, address, zone) -> [window end, refusals not yet logged, the last fields]
        self._windows: dict[tuple[str, str, str], list[Any]] = {}
        self._lock = threading.Lock()

    def refused(
        self,
        now: float,
        *,
        status: int,
        rule: str,
        zone: str,
        key: str | None,
        address: str,
        retry_after_s: float | None,
    ) -> None:
        """Note one refusal; writes a line unless this caller has one for the current window."""
        entry = self.entry(
            status=status,
            rule=rule,
            zone=zone,
            key=key,
            address=address,
            retry_after_s=retry_after_s,
        )
        self.again(now, entry)

    @staticmethod
    def entry(
        *,
        status: int,
        rule: str,
        zone: str,
        key: str | None,
        address: str,
        retry_after_s: float | None,
    ) -> Entry:
        """A refusal's caller and the fields of its line, for :meth:`again` (one entry serves
        every refusal that is the same; it is not changed)."""
        fields = {
            "event": "refused",
            "status": status,
            "rule": rule,
            "zone": zone,
            "key": key,
            "address": address,
            "retry_after_s": retry_after_s,
        }
        return (key or "", address, zone), fields

    def again(self, now: float, entry: Entry) -> None:
        """Note one refusal described by ``entry`` (from :meth:`entry`), as :meth:`refused`."""
        if not self.logger.isEnabledFor(logging.INFO):
            return
        who, fields = entry
        retry_after_s = fields["retry_after_s"]
        overflow: list[tuple[dict[str, Any], int]] = []
        with self._lock:
            window = self._windows.get(who)
            if window is not None and now < window[0]:
                window[1] += 1
                window[2] = fields
                return
            wait = retry_after_s if retry_after_s is not None else _MIN_WINDOW_S
            end = now + min(max(wait, _MIN_WINDOW_S), _MAX_WINDOW_S)
            if len(self._windows) >= self.max_callers and window is None:
                overflow = self._flush_locked(None)
            self._windows[who] = [end, 0, fields]
        for pending, count in overflow:
            self._write(pending, count)
        self._write(fields, 1 + (window[1] if window is not None else 0))

    def flush(self, now: float | None = None) -> None:
        """Write the counts of windows that have ended by ``now`` (all of them without it)."""
        with self._lock:
            pending = self._flush_locked(now)
        for fields, count in pending:
            self._write(fields, count)

    def _flush_locked(self, now: float | None) -> list[tuple[dict[str, Any], int]]:
        pending = []
        for who, (end, count, fields) in list(self._windows.items()):
            if now is None or end <= now:
                del self._windows[who]
                if count:
                    pending.append((fields, count))
        return pending

    def _write(self, fields: dict[str, Any], count: int) -> None:
        fields = {**fields, "count": count}
        retry = fields["retry_after_s"]
        text = " ".join(
            f"{name}={_quoted(value)}"
            for name, value in (
                ("status", fields["status"]),
                ("rule", fields["rule"]),
                ("zone", fields["zone"] or "-"),
                ("key", fields["key"] or "-"),
                ("address", fields["address"]),
                ("retry_after", "-" if retry is None else f"{retry:g}"),
                ("count", count),
            )
        )
        self.logger.info("refused %s", text, extra={"fields": fields})


def _quoted(value: object) -> str:
    text = str(value)
    return '"' + text.replace('"', "'") + '"' if " " in text or '"' in text else text
