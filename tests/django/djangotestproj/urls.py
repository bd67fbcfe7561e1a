from __future__ import annotations

from django.urls import include, path, re_path
from rest_framework.routers import SimpleRouter

from djangotestproj import views

router = SimpleRouter()
router.register("things", views.DrfViewSet, basename="thing")

nested = [
    path("items/<int:pk>/", views.item, name="item"),
]

urlpatterns = [
    path("plain/", views.plain, name="plain"),
    path("v1/", include((nested, "v1"), namespace="v1")),
    re_path(r"^legacy/(?P<pk>[0-9]+)/$", views.item, name="legacy"),
    path("client-error/", views.client_error),
    path("server-error/", views.server_error),
    path("tokens/", views.tokens),
    path("recording/", views.recording),
    path("decorated/", views.decorated),
    path("exempt/", views.exempt),
    path("by-state/", views.by_state),
    path("whoami/", views.whoami),
    path("async/", views.async_plain, name="async"),
    path("async-fail/", views.async_fail),
    path("async-recording/", views.async_recording),
    path("async-anonymous/", views.async_anonymous),
    path("cbv/", views.ItemView.as_view(), name="cbv"),
    path("cbv-dispatch/", views.DispatchDecoratedView.as_view()),
    path("cbv-async/", views.AsyncItemView.as_view()),
    path("stream/", views.stream),
    path("async-stream/", views.async_stream),
    path("stream-fails/", views.stream_fails),
    path("download/", views.download),
    path("drf/items/", views.DrfItems.as_view(), name="drf-items"),
    path("drf/fn/", views.drf_function),
    path("drf/", include(router.urls)),
]
