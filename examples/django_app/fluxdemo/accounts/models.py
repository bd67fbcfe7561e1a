"""Organisations are the paying customers; users belong to one; API tokens belong to a user."""

import secrets

from django.conf import settings
from django.db import models


def new_token_key() -> str:
    return secrets.token_urlsafe(32)


class Organisation(models.Model):
    name = models.CharField(max_length=200)
    # The customer's external id in Fluxrate (customer_external_id of every usage event).
    external_id = models.SlugField(max_length=100, unique=True)

    def __str__(self) -> str:
        return self.name


class Profile(models.Model):
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="profile"
    )
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="members")

    def __str__(self) -> str:
        return f"{self.user} @ {self.organisation}"


class ApiToken(models.Model):
    key = models.CharField(max_length=64, unique=True, default=new_token_key)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"token of {self.user}"
