from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Iterator
from typing import Any

from django.http import (
    FileResponse,
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.utils.decorators import method_decorator
from django.views import View
from rest_framework import viewsets
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from fluxrate_web import meter, record


def plain(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True, "pad": "x" * 10})


def item(request: HttpRequest, pk: int) -> JsonResponse:
    return JsonResponse({"pk": pk})


def client_error(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"detail": "bad"}, status=400)


def server_error(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("boom")


def tokens(request: HttpRequest) -> JsonResponse:
    response = JsonResponse({"ok": True})
    response["X-Tokens-Used"] = "42"
    return response


def recording(request: HttpRequest) -> JsonResponse:
    record("reports", 3)
    return JsonResponse({"ok": True})


@meter("reports", quantity=2)
def decorated(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


@meter.exempt
def exempt(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


def by_state(request: HttpRequest) -> JsonResponse:
    request.tenant = "tenant-from-state"  # type: ignore[attr-defined]
    return JsonResponse({"ok": True})


async def async_plain(request: HttpRequest) -> JsonResponse:
    await asyncio.sleep(0)
    return JsonResponse({"async": True})


async def async_fail(request: HttpRequest) -> JsonResponse:
    await asyncio.sleep(0)
    return JsonResponse({"detail": "nope"}, status=503)


async def async_recording(request: HttpRequest) -> JsonResponse:
    await asyncio.sleep(0)
    record("reports", 5)
    return JsonResponse({"ok": True})


def whoami(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"user": request.user.get_username()})


async def async_anonymous(request: HttpRequest) -> JsonResponse:
    # Never touches request.user: the adapter must resolve it with `await request.auser()`.
    return JsonResponse({"ok": True})


class ItemView(View):
    def get(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse({"items": []})

    @method_decorator(meter("reports"))
    def post(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse({"created": True}, status=201)


@method_decorator(meter("reports", quantity=7), name="dispatch")
class DispatchDecoratedView(View):
    def get(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse({"ok": True})

    def delete(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse({"ok": True})


class AsyncItemView(View):
    async def get(self, request: HttpRequest) -> JsonResponse:
        await asyncio.sleep(0)
        return JsonResponse({"async_cbv": True})


CHUNKS = [b"a" * 100, b"b" * 200, b"c" * 300]


def _chunks() -> Iterator[bytes]:
    yield from CHUNKS


async def _achunks() -> AsyncIterator[bytes]:
    for chunk in CHUNKS:
        await asyncio.sleep(0)
        yield chunk


def stream(request: HttpRequest) -> StreamingHttpResponse:
    return StreamingHttpResponse(_chunks(), content_type="application/octet-stream")


async def async_stream(request: HttpRequest) -> StreamingHttpResponse:
    return StreamingHttpResponse(_achunks(), content_type="application/octet-stream")


def stream_fails(request: HttpRequest) -> StreamingHttpResponse:
    def broken() -> Iterator[bytes]:
        yield b"x" * 10
        raise RuntimeError("the stream broke")

    return StreamingHttpResponse(broken())


def download(request: HttpRequest) -> FileResponse:
    return FileResponse(io.BytesIO(b"z" * 10_000), as_attachment=True, filename="data.bin")


# -- Django REST framework


class DrfItems(APIView):
    def get(self, request: Request) -> Response:
        return Response({"drf": True})

    @method_decorator(meter("reports"))
    def post(self, request: Request) -> Response:
        return Response({"drf": "created"}, status=201)


class DrfViewSet(viewsets.ViewSet):
    def list(self, request: Request) -> Response:
        return Response([])

    @method_decorator(meter("reports", quantity=4))
    def create(self, request: Request) -> Response:
        return Response({}, status=201)

    def retrieve(self, request: Request, pk: Any = None) -> Response:
        return Response({"pk": pk})


@api_view(["GET"])
def drf_function(request: Request) -> Response:
    return Response({"fn": True})
