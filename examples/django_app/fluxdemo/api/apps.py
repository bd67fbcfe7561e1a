from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "fluxdemo.api"
    label = "api"
