"""The API: a plain JSON view, a class-based view, an async view and a streaming download.

Billing is declared in ``fluxrate.yaml`` (by route) except ``POST /api/reports/``, which is
decorated here: a decorator wins over the file's rules.
"""

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.utils.decorators import method_decorator
from django.views import View

from fluxdemo.accounts.auth import token_required
from fluxrate_web import meter

CITIES = {"paris": (48.86, 2.35), "lagos": (6.52, 3.38), "lima": (-12.05, -77.04)}


def health(request: HttpRequest) -> JsonResponse:
    """Load-balancer probe; excluded from billing in fluxrate.yaml."""
    return JsonResponse({"status": "ok"})


def _temperature(city: str, day: int) -> float:
    digest = hashlib.sha256(f"{city}:{day}".encode()).digest()
    return round(5 + digest[0] / 255 * 25, 1)


@token_required
def forecast(request: HttpRequest) -> JsonResponse:
    """GET /api/forecast?city=paris: a plain JSON view."""
    city = request.GET.get("city", "").lower()
    if city not in CITIES:
        return JsonResponse({"detail": f"unknown city {city!r}"}, status=404)
    lat, lon = CITIES[city]
    days = [{"day": d, "celsius": _temperature(city, d)} for d in range(3)]
    return JsonResponse({"city": city, "lat": lat, "lon": lon, "days": days})


@method_decorator(token_required, name="dispatch")
class ReportsView(View):
    """GET lists the organisation's reports (an API call); POST generates one (a report)."""

    def get(self, request: HttpRequest) -> JsonResponse:
        org = request.user.profile.organisation  # type: ignore[union-attr]
        return JsonResponse({"organisation": org.external_id, "reports": []})

    @method_decorator(meter("reports"))
    def post(self, request: HttpRequest) -> JsonResponse:
        if request.content_type != "application/json":
            return JsonResponse({"detail": "send JSON"}, status=415)
        return JsonResponse({"status": "generating"}, status=202)


@token_required
async def search(request: HttpRequest) -> JsonResponse:
    """GET /api/search?q=li: an async view."""
    query = request.GET.get("q", "").lower()
    await asyncio.sleep(0)  # stands for an awaited backend call
    return JsonResponse({"results": sorted(c for c in CITIES if query in c)})


def _rows(year: int) -> Iterator[bytes]:
    yield b"day,city,celsius\n"
    for day in range(365 if year % 4 else 366):
        lines = (f"{day},{c},{_temperature(c, year * 1000 + day)}\n" for c in CITIES)
        yield "".join(lines).encode()


async def _arows(year: int) -> AsyncIterator[bytes]:
    for chunk in _rows(year):
        yield chunk


@token_required
def export_csv(request: HttpRequest, year: int) -> Any:
    """GET /api/exports/2025.csv: a streamed download, billed per byte once it was sent.

    Under ASGI the rows come from an async iterator (Django would otherwise buffer a sync one).
    """
    rows = _arows(year) if isinstance(request, ASGIRequest) else _rows(year)
    response = StreamingHttpResponse(rows, content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="weather-{year}.csv"'
    return response
