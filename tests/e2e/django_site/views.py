"""Views of the minimal Django project."""

from __future__ import annotations

import os
import tempfile

from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse

from tests.e2e.payloads import FILE_BYTES, STREAM_CHUNKS, echo_payload, hash_body

_FILE = os.path.join(tempfile.gettempdir(), f"gantry-e2e-django-{os.getpid()}.bin")


def hello(request: HttpRequest) -> HttpResponse:
    """The classic greeting."""
    return HttpResponse("Hello World!", content_type="text/plain")


def echo(request: HttpRequest, rest: str = "") -> JsonResponse:
    """What the app saw of the request, with a hash of the body it read."""
    sha256, size = hash_body(request.read)
    payload = echo_payload(request.META, sha256, size)
    payload["route_rest"] = rest
    return JsonResponse(payload)


def stream(request: HttpRequest) -> StreamingHttpResponse:
    """A streamed response of several chunks."""
    return StreamingHttpResponse(iter(STREAM_CHUNKS), content_type="text/plain")


def file(request: HttpRequest) -> FileResponse:
    """A file sent with FileResponse (wsgi.file_wrapper underneath)."""
    if not os.path.exists(_FILE):
        with open(_FILE, "wb") as handle:
            handle.write(FILE_BYTES)
    return FileResponse(open(_FILE, "rb"), content_type="application/octet-stream")  # noqa: SIM115


def error(request: HttpRequest) -> HttpResponse:
    """Fails on purpose."""
    raise RuntimeError("django view failed on purpose: E2E-TRACEBACK-MARKER")
