"""Bearer-token authentication for the API: ``Authorization: Bearer <key>`` sets ``request.user``.

It replaces Django's session-based ``AuthenticationMiddleware``: this project is an API only.
Sync- and async-capable like every middleware of the stack, so ASGI requests never switch to a
thread for it. The user is loaded with its profile and organisation, so resolving the customer
(``user:profile.organisation.external_id``) costs no query.
"""

from collections.abc import Callable
from functools import wraps
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest, HttpResponse, JsonResponse

from fluxdemo.accounts.models import ApiToken

_TOKENS = ApiToken.objects.select_related("user__profile__organisation")


def _bearer(request: HttpRequest) -> str | None:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return None
    return key.strip()


def _invalid() -> JsonResponse:
    return JsonResponse({"detail": "Invalid API token."}, status=401)


class TokenAuthenticationMiddleware:
    """Sets ``request.user`` to the token's user, or ``AnonymousUser`` without a token."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        request.user = AnonymousUser()
        key = _bearer(request)
        if key is not None:
            token = _TOKENS.filter(key=key).first()
            if token is None:
                return _invalid()
            request.user = token.user
        return self.get_response(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        request.user = AnonymousUser()
        key = _bearer(request)
        if key is not None:
            token = await _TOKENS.filter(key=key).afirst()
            if token is None:
                return _invalid()
            request.user = token.user
        response: HttpResponse = await self.get_response(request)
        return response


def _unauthorized() -> JsonResponse:
    return JsonResponse({"detail": "Authentication credentials were not provided."}, status=401)


def token_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """401 unless the request carries a valid API token. Works on sync and async views."""
    if iscoroutinefunction(view):

        @wraps(view)
        async def async_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            if not request.user.is_authenticated:
                return _unauthorized()
            return await view(request, *args, **kwargs)

        return async_wrapper

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        if not request.user.is_authenticated:
            return _unauthorized()
        return view(request, *args, **kwargs)

    return wrapper
