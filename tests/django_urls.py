"""Views and URLs of the Django site the integration tests serve."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views import View
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from ratekeeper.integrations.django import exempt, limit
from ratekeeper.integrations.drf import RateKeeperThrottle


def plain(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


@limit("media")
def media(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


@limit("2/minute", key=lambda request: request.user.pk)
def search(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


@exempt
def health(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


@limit("3/minute")
class Export(View):
    def get(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse({"ok": True})


class Throttled(APIView):  # type: ignore[misc]
    throttle_classes = (RateKeeperThrottle.of("2/minute", key=lambda request: request.user.pk),)

    def get(self, request: Request) -> Response:
        return Response({"user": request.user.pk})


def failing(request: HttpRequest) -> Any:
    raise RuntimeError("boom")


urlpatterns = [
    path("plain", plain),
    path("media", media),
    path("search", search),
    path("health", health),
    path("export", Export.as_view()),
    path("drf", Throttled.as_view()),
    path("fail", failing),
]
