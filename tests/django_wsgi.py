"""The WSGI application of the Django test site (for waitress in a thread and for gunicorn)."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_site")

from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()
