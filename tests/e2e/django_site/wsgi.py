"""WSGI entry point of the minimal Django project, wrapped in wsgiref's validator."""

import os
from collections.abc import Callable
from typing import Any
from wsgiref.validate import validator

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.e2e.django_site.settings")

django_app = get_wsgi_application()


def _keep_raw_path(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
    # Django rewrites META["PATH_INFO"] to the decoded text: keep what the server sent.
    environ["e2e.server_path_info"] = environ.get("PATH_INFO")
    return django_app(environ, start_response)


app = validator(_keep_raw_path)
