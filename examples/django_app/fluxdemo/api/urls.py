from django.urls import path

from fluxdemo.api import views

app_name = "api"

urlpatterns = [
    path("forecast", views.forecast, name="forecast"),
    path("reports/", views.ReportsView.as_view(), name="reports"),
    path("search", views.search, name="search"),
    path("exports/<int:year>.csv", views.export_csv, name="export"),
]
