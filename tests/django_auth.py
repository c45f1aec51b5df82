"""Who the test site's caller is: X-User as request.user, for Django and for DRF."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request


class User:
    """A user named by the X-User header (enough for key functions)."""

    is_authenticated = True

    def __init__(self, name: str) -> None:
        self.pk = name


class HeaderUserMiddleware:
    """Sets request.user from X-User, as an authentication middleware would."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.user = User(request.headers.get("X-User", "anonymous"))  # type: ignore[assignment]
        return self.get_response(request)


class HeaderAuthentication(BaseAuthentication):  # type: ignore[misc]
    """DRF authentication by the X-User header."""

    def authenticate(self, request: Request) -> tuple[User, None] | None:
        name = request.headers.get("X-User")
        return None if name is None else (User(name), None)
