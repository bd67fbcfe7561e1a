"""``python manage.py seed_demo``: one organisation, one user, one API token (printed)."""

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from fluxdemo.accounts.models import ApiToken, Organisation, Profile


class Command(BaseCommand):
    help = "Create a demo organisation, user and API token, and print the token."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--org", default="acme", help="the organisation's external id")
        parser.add_argument("--user", default="alice")
        parser.add_argument("--token", default=None, help="use this token key (default: random)")

    def handle(self, *args: Any, **options: Any) -> None:
        org, _ = Organisation.objects.get_or_create(
            external_id=options["org"], defaults={"name": options["org"].title()}
        )
        user, _ = get_user_model().objects.get_or_create(username=options["user"])
        Profile.objects.update_or_create(user=user, defaults={"organisation": org})
        token = ApiToken(user=user)
        if options["token"]:
            token.key = options["token"]
        token.save()
        self.stdout.write(token.key)
