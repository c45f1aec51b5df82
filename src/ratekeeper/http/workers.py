"""A warning at start when a ``memory://`` store is split between worker processes.

Several processes serving one app (``uvicorn --workers``, gunicorn, a pre-forking WSGI server)
each get a memory store of their own, so ``100/minute`` lets 100 requests through per worker,
silently. :func:`warn_if_split` looks for signs of siblings when a middleware or an integration
starts: ``WEB_CONCURRENCY`` above 1 (uvicorn and gunicorn read it), a multiprocessing parent
(uvicorn's workers), or another live child of the same parent running the same program in the
same directory (the workers of a forking server such as gunicorn), found through a temporary
directory they register in. A worker started before its siblings cannot see them; a later one
does, so the warning appears once the second one starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import multiprocessing
import os
import sys
import tempfile
from pathlib import Path

from ratekeeper.stores.memory import MemoryStore

__all__ = ["warn_if_split"]

log = logging.getLogger("ratekeeper.http")


def _siblings(where: str) -> int:
    """Other live processes registered for ``where`` by the same parent (a pre-forking
    server's workers); registers this one. Two separate runs of one program are not siblings."""
    parent = os.getppid()
    if parent <= 1:
        return 0
    program = f"{os.getcwd()}|{sys.argv[0] if sys.argv else ''}|{where}|{parent}"
    digest = hashlib.blake2b(program.encode(), digest_size=8).hexdigest()
    folder = Path(tempfile.gettempdir()) / f"ratekeeper-workers-{digest}"
    try:
        folder.mkdir(exist_ok=True)
        (folder / str(os.getpid())).touch()
        names = [p.name for p in folder.iterdir()]
    except OSError:
        return 0
    alive = 0
    for name in names:
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            os.kill(int(name), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                (folder / name).unlink()
            continue
        except PermissionError:
            pass
        alive += 1
    return alive


def warn_if_split(store: object, where: str) -> bool:
    """Log a warning (and return ``True``) when ``store`` is a memory store and this process
    looks like one of several serving ``where`` (a policy's source, an app's name)."""
    if not isinstance(store, MemoryStore):
        return False
    reasons = []
    concurrency = os.environ.get("WEB_CONCURRENCY", "")
    if concurrency.isdigit() and int(concurrency) > 1:
        reasons.append(f"WEB_CONCURRENCY={concurrency}")
    if multiprocessing.parent_process() is not None:
        reasons.append("this process is a worker of another")
    others = _siblings(where)
    if others:
        reasons.append(f"{others} other process(es) of this program use it")
    if reasons:
        log.warning(
            "%s: the memory:// store counts per process (%s), so each worker enforces the "
            "limits alone and the real budget is several times larger; use a shared store "
            "(sqlite:///ratekeeper.db on one machine, redis:// on several)",
            where,
            "; ".join(reasons),
        )
    return bool(reasons)
