"""A requests ``HTTPAdapter`` with the pacing, learning and retry of the httpx transports.

It runs the same flow (:class:`~ratekeeper.client.flow.ClientFlow`) through the same threads
driver as :class:`~ratekeeper.client.transport.RateLimitTransport`; only sending, reading and
how a requests answer is seen differ::

    import requests
    from ratekeeper.client import HostPolicy, RateLimitAdapter

    adapter = RateLimitAdapter(default=HostPolicy(limits="5/second"))
    session = requests.Session()
    session.mount("https://api.example.com/", adapter)
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ProtocolError

from ratekeeper.client.flow import LowRemainingCallback
from ratekeeper.client.pacing import HostPolicy
from ratekeeper.client.retry import RetryPolicy
from ratekeeper.client.transport import SyncDriver
from ratekeeper.clock import Clock, system_clock
from ratekeeper.stores.base import Store

__all__ = ["RateLimitAdapter", "RequestsWire"]


@dataclass(frozen=True, slots=True)
class _Call:
    """One ``send``: the prepared request and the options requests passed with it."""

    request: requests.PreparedRequest
    options: dict[str, Any]


class RequestsWire:
    """How the flow sees requests' requests and answers."""

    __slots__ = ()

    def method(self, request: _Call) -> str:
        """The request's method."""
        return (request.request.method or "GET").upper()

    def url(self, request: _Call) -> httpx.URL:
        """The request's URL."""
        return httpx.URL(request.request.url or "")

    def status(self, response: requests.Response) -> int:
        """The answer's status code."""
        return response.status_code

    def raw_headers(self, response: requests.Response) -> Iterable[tuple[bytes, bytes]]:
        """The answer's header fields as bytes."""
        return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()]

    def content_length(self, response: requests.Response) -> str | None:
        """The answer's ``Content-Length``."""
        length: str | None = response.headers.get("content-length")
        return length

    def body(self, response: requests.Response) -> bytes:
        """The answer's body (read)."""
        return response.content

    def is_stale(self, error: BaseException) -> bool:
        """A connection closed under the request ("Connection aborted")."""
        cause = error.args[0] if error.args else None
        return isinstance(error, requests.ConnectionError) and isinstance(cause, ProtocolError)

    def user_agent(self, request: _Call) -> str | None:
        """The request's ``User-Agent``."""
        agent = request.request.headers.get("User-Agent")
        return agent.decode("latin-1") if isinstance(agent, bytes) else agent

    def set_user_agent(self, request: _Call, value: str) -> None:
        """Set the request's ``User-Agent``."""
        request.request.headers["User-Agent"] = value


class RateLimitAdapter(SyncDriver[_Call, requests.Response], HTTPAdapter):
    """A polite requests transport adapter: mount it on a ``requests.Session``.

    The options are :class:`~ratekeeper.client.transport.RateLimitTransport`'s; ``adapter``
    options (``pool_connections``, ``pool_maxsize``, ...) go to ``HTTPAdapter``. Retries are
    the flow's (``retry``): leave ``max_retries`` at 0 so urllib3 does not retry underneath.
    """

    def __init__(
        self,
        *,
        hosts: Mapping[str, HostPolicy] | None = None,
        default: HostPolicy | None = None,
        retry: RetryPolicy | None = None,
        store: Store | str | None = None,
        clock: Clock = system_clock,
        sleep: Callable[[float], None] = time.sleep,
        random_fn: Callable[[], float] = random.random,
        on_low_remaining: LowRemainingCallback | None = None,
        **adapter: Any,
    ) -> None:
        HTTPAdapter.__init__(self, **adapter)
        SyncDriver.__init__(
            self,
            RequestsWire(),
            hosts=hosts,
            default=default,
            retry=retry,
            store=store,
            clock=clock,
            sleep=sleep,
            random_fn=random_fn,
            on_low_remaining=on_low_remaining,
        )

    def send(  # type: ignore[override]
        self, request: requests.PreparedRequest, **options: Any
    ) -> requests.Response:
        """Send ``request`` when its host's pacing allows, retrying as the policy says."""
        return self._drive(_Call(request, options))

    def _send(self, request: _Call) -> requests.Response:
        return HTTPAdapter.send(self, request.request, **request.options)

    def _read(self, response: requests.Response) -> None:
        response.content  # noqa: B018 (reading it is the point)

    def _close(self, response: requests.Response) -> None:
        response.close()
