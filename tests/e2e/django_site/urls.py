"""URLs of the minimal Django project."""

from django.urls import path, re_path

from tests.e2e.django_site import views

urlpatterns = [
    path("hello", views.hello),
    re_path(r"^echo/(?P<rest>.*)$", views.echo),
    path("stream", views.stream),
    path("file", views.file),
    path("error", views.error),
]
