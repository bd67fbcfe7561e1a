"""``python manage.py fluxrate check | routes | replay FILE``."""

from __future__ import annotations

import argparse
import importlib
import io
from collections.abc import Sequence
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from fluxrate_web.core.check import report
from fluxrate_web.django import _runtime, checks
from fluxrate_web.django.routes import RouteRow, route_rows

REPLAY_MODULE = "fluxrate_web.core.replay"


def _table(headers: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return lines


class Command(BaseCommand):
    help = (
        "Fluxrate usage metering: 'check' validates the configuration, 'routes' lists every URL "
        "pattern with what it bills, 'replay FILE' resends the events of a failure log."
    )
    requires_system_checks: list[str] = []  # `check` reports config problems itself

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", metavar="{check,routes,replay}", required=True)
        sub.add_parser("check", help="validate settings.FLUXRATE and the YAML file")
        routes = sub.add_parser("routes", help="every URL pattern with its meters and customer")
        routes.add_argument(
            "--urlconf", default=None, help="a URLconf module (default: ROOT_URLCONF)"
        )
        replay = sub.add_parser("replay", help="resend the events of a failure log")
        try:
            module = importlib.import_module(REPLAY_MODULE)
        except ImportError:  # pragma: no cover - core ships replay
            replay.add_argument("file")
        else:
            module.configure(replay)

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "check":
            self._check()
        elif action == "routes":
            self._routes(options.get("urlconf"))
        elif action == "replay":
            self._replay(options)

    # -- check -------------------------------------------------------------------------------

    def _check(self) -> None:
        messages = checks.check_config() + checks.check_middleware()
        errors = [m for m in messages if m.is_serious()]
        for message in messages:
            style = self.style.ERROR if message.is_serious() else self.style.WARNING
            self.stderr.write(style(f"{message.id}: {message.msg}"))
            if message.hint:
                self.stderr.write(f"    HINT: {message.hint}")
        if errors:
            raise CommandError(f"{len(errors)} error(s) in the fluxrate configuration")
        config = _runtime.load_settings_config()
        runtime = _runtime.current()
        buffer = io.StringIO()
        report(config, runtime.metering.rules if runtime is not None else None, buffer)
        self.stdout.write(buffer.getvalue(), ending="")
        self.stdout.write(self.style.SUCCESS("fluxrate configuration OK"))

    # -- routes ------------------------------------------------------------------------------

    def _routes(self, urlconf: str | None) -> None:
        try:
            metering = _runtime.get_metering()
        except Exception as exc:
            raise CommandError(str(exc)) from None
        rows: list[RouteRow] = route_rows(metering, urlconf)
        table = [(r.route, r.name, r.methods, r.meters, r.customer, r.source) for r in rows]
        for line in _table(("ROUTE", "NAME", "METHODS", "METERS", "CUSTOMER", "RULE"), table):
            self.stdout.write(line)

    # -- replay ------------------------------------------------------------------------------

    def _replay(self, options: dict[str, Any]) -> None:
        module = importlib.import_module(REPLAY_MODULE)
        namespace = argparse.Namespace(**options)
        # Unless given on the command line: the API key, base URL and token of the settings.
        try:
            config = _runtime.load_settings_config()
        except Exception:
            config = None
        if config is not None:
            for key in ("api_key", "base_url", "access_token"):
                if getattr(namespace, key, None) is None and getattr(config, key):
                    setattr(namespace, key, getattr(config, key))
            if not getattr(namespace, "allow_insecure", False) and config.allow_insecure:
                namespace.allow_insecure = True
        buffer = io.StringIO()
        try:
            code = module.run(namespace, out=buffer)
        finally:
            self.stdout.write(buffer.getvalue(), ending="")
        if code:
            raise CommandError(f"replay failed (exit status {code})", returncode=int(code))
