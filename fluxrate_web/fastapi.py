"""FastAPI: the same middleware as Starlette, plus a dependency form of ``@meter``.

```python
from fastapi import Depends, FastAPI
from fluxrate_web.fastapi import FluxrateMiddleware, metered

app = FastAPI()
app.add_middleware(FluxrateMiddleware, config="fluxrate.yaml")

@app.get("/v1/search", dependencies=[Depends(metered("api_calls"))])
async def search(q: str) -> dict[str, str]: ...
```

``metered(...)`` takes the arguments of :func:`fluxrate_web.meter`. The dependency does not bill
by itself: it tells :class:`FluxrateMiddleware` (which must be installed) that this request is
metered, exactly as ``@meter`` on the endpoint would, and the middleware bills when the response
is complete. Because it runs among the route's dependencies, a customer stored on
``request.state`` by an earlier dependency (your API-key check) is visible to it; with
``on_missing_customer: reject`` it answers 401 when no customer resolves. It adds nothing to the
OpenAPI schema.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from fastapi import HTTPException, Request

from fluxrate_web.core._log import log_limited
from fluxrate_web.core.rules import meter
from fluxrate_web.starlette import REJECT_DETAIL, FluxrateMiddleware, current_exchange

__all__ = ["FluxrateMiddleware", "metered"]

logger = logging.getLogger("fluxrate_web.fastapi")


def metered(
    name: str,
    *,
    quantity: Any = 1,
    customer: Any = None,
    metadata: Mapping[str, Any] | Callable[..., Any] | None = None,
    bill_on: str | int | Iterable[str | int] | None = None,
) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency metering the request with meter ``name``: use it as
    ``Depends(metered("api_calls"))`` in a route's or a router's ``dependencies``, or as a
    parameter default. Arguments as for :func:`fluxrate_web.meter` (validated now)."""
    options: dict[str, Any] = {
        "quantity": quantity,
        "customer": customer,
        "metadata": metadata,
        "bill_on": bill_on,
    }

    def rule_carrier() -> None:  # pragma: no cover - never called, only carries the rule
        """The @meter rule of one ``metered(...)``."""

    carrier = meter(name, **options)(rule_carrier)

    async def metered_dependency(request: Request) -> None:
        exchange = current_exchange(request.scope)
        if exchange is None:
            log_limited(
                logging.WARNING,
                "fastapi:no-middleware",
                "fluxrate: Depends(metered(%r)) has no effect without FluxrateMiddleware; "
                "add app.add_middleware(FluxrateMiddleware, ...)",
                name,
                log=logger,
            )
            return
        exchange.add_carrier(carrier)
        if await exchange.missing_required_customer():
            raise HTTPException(status_code=401, detail=REJECT_DETAIL)

    metered_dependency.__name__ = f"metered_{_identifier(name)}"
    metered_dependency.__qualname__ = metered_dependency.__name__
    return metered_dependency


def _identifier(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text) or "meter"
