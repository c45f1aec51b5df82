"""Settings of the Django site the integration tests serve (DJANGO_SETTINGS_MODULE)."""

from __future__ import annotations

import os

SECRET_KEY = "tests-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "django_urls"
INSTALLED_APPS = ["rest_framework"]
DATABASES: dict[str, object] = {}
USE_TZ = True
MIDDLEWARE = [
    "django_auth.HeaderUserMiddleware",  # request.user from X-User, before ratekeeper
    "ratekeeper.integrations.django.RateKeeperMiddleware",
]
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["django_auth.HeaderAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": [],
    "UNAUTHENTICATED_USER": None,
}
RATEKEEPER = {
    "POLICY": {
        "apply": ["api"],
        "identity": {"source": "api_key", "anonymous": "reject"},
        "limits": {"api": {"rates": "100/minute"}, "media": {"rates": "5/minute"}},
    },
    "STORE": os.environ.get("RATEKEEPER_TEST_STORE") or None,
}
