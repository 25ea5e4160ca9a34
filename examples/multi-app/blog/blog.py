"""The "blog" app of the multi-app example: Django in one file, mounted under /blog.

The front sends SCRIPT_NAME=/blog and PATH_INFO without the prefix, so the app's
own routes are "/" and "posts/<slug>/", and reverse() makes links that start with
/blog/ without the app knowing where it is mounted.
"""

from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path, reverse

settings.configure(
    DEBUG=False,
    SECRET_KEY="example-only-not-secret",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
)

POSTS = {"hello": "Hello from the blog", "stack": "One file runs the stack"}


def index(request: HttpRequest) -> HttpResponse:
    links = "".join(
        f'<li><a href="{reverse("post", args=[slug])}">{title}</a></li>'
        for slug, title in POSTS.items()
    )
    return HttpResponse(f"<!doctype html><h1>blog</h1><ul>{links}</ul>")


def post(request: HttpRequest, slug: str) -> HttpResponse:
    title = POSTS.get(slug)
    if title is None:
        return HttpResponse("no such post\n", status=404, content_type="text/plain")
    return HttpResponse(f"{title}\n", content_type="text/plain")


def where(request: HttpRequest) -> JsonResponse:
    """What the app sees of its mount point: handy when checking a front's script_name."""
    return JsonResponse(
        {
            "script_name": request.META.get("SCRIPT_NAME", ""),
            "path_info": request.path_info,
            "path": request.path,
            "index_url": reverse("index"),
        }
    )


urlpatterns = [
    path("", index, name="index"),
    path("posts/<slug:slug>/", post, name="post"),
    path("where", where, name="where"),
]

application = get_wsgi_application()
