import django
from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, JsonResponse
from django.urls import path

from ratekeeper.integrations.django import limit

settings.configure(
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["*"],
    MIDDLEWARE=["ratekeeper.integrations.django.RateKeeperMiddleware"],
    RATEKEEPER={"POLICY": {"apply": ["100/minute"]}},
)


@limit("5/minute", key=lambda request: request.META["REMOTE_ADDR"])
def search(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"q": request.GET.get("q", "")})


urlpatterns = [path("search", search)]
django.setup()
application = get_wsgi_application()
