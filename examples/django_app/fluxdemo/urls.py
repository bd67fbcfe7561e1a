from django.urls import include, path

from fluxdemo.api import views

urlpatterns = [
    path("health", views.health, name="health"),
    path("api/", include("fluxdemo.api.urls")),
]
