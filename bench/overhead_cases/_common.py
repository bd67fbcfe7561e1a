"""What the framework case modules share besides the request drivers of ``__init__``.

- the measured route and the metering configuration of every ``fluxrate`` case;
- :func:`capturing_client` and :func:`bounded` / :func:`bounded_async`: a real client whose
  events are captured instead of queued, and the per-request check that keeps them bounded;
- peers: which are installed (:func:`available_peers`), Sentry and Moesif aimed at the sink,
  and :func:`teardown` (the harness calls a case module's ``teardown``);
- :func:`quick_loop`: running a case module alone, without the harness.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from overhead_cases import sink_url

PATH = "/v1/items/42"
"""The route every case requests (``/v1/items/{item_id}``, a JSON answer)."""
METER_TOKEN = "0b8f6d6e-2c1a-4f5e-9a53-3f3c8d9e7a10"


def fluxrate_settings() -> dict[str, Any]:
    """The metering configuration of the ``fluxrate`` cases (``settings.FLUXRATE`` keys): the
    route billed by a config rule, ``api_calls``, customer from ``X-Customer-Id``."""
    return {
        "meters": {"api_calls": METER_TOKEN},
        "customer": "header:X-Customer-Id",
        "endpoints": [{"route": "/v1/items/*", "meter": "api_calls"}],
    }


# --------------------------------------------------------------------------- captured events

_KEEP: list[Any] = []


def capturing_client() -> tuple[Any, list[Any]]:
    """A real ``FluxrateClient`` whose events are captured (``capture_events()``: validated,
    built and handed over by the real client code, kept in a list instead of the delivery
    queue) for the life of this case's process. Returns the client and that list."""
    from fluxrate_web.core.client import FluxrateClient, capture_events

    capture = capture_events()
    _KEEP.append(capture)  # a collected context manager would end the capture
    captured: list[Any] = capture.__enter__()
    client = FluxrateClient(
        api_key="org_live_bench", base_url="http://127.0.0.1:9", allow_insecure=True
    )
    return client, captured


def track_in_view() -> tuple[Callable[[], object], list[Any]]:
    """For the ``bare_track`` cases: a function a bare app's view calls once per request, doing
    what an app that meters by hand pays (one ``FluxrateClient.track()`` of the measured meter,
    the customer read by the view itself), and the list its events are captured in."""
    client, captured = capturing_client()
    track = client.track

    def call() -> object:
        return track(METER_TOKEN, "customer-42")

    return call, captured


_OPEN: list[tuple[Any, str]] = []


def delivering_client(durability: str = "memory") -> Any:
    """A real ``FluxrateClient`` delivering every event to the harness's sink from its
    background thread, in ``durability`` mode (``strict``: each event is written to a spool in
    a fresh temporary directory before ``track()`` returns). Closed, and its directory removed,
    by :func:`teardown`."""
    from fluxrate_web.core.client import FluxrateClient

    directory = tempfile.mkdtemp(prefix=f"fluxrate-bench-{durability}-")
    kwargs: dict[str, Any] = {}
    if durability != "memory":
        kwargs = {"durability": durability, "spool_path": os.path.join(directory, "spool")}
    client = FluxrateClient(
        api_key="org_live_bench",
        base_url=sink_url(),
        allow_insecure=True,
        # what the sink cannot take before exit goes here, not to the terminal
        failed_events_path=os.path.join(directory, "failed.jsonl"),
        **kwargs,
    )
    client.start()  # strict: opens the spool now, not in the first timed request
    _OPEN.append((client, directory))
    return client


def checked_delivery(one: Callable[[], Any], client: Any) -> Callable[[], Any]:
    """``one`` (a metered request, sync or async), checking every 10,000 requests that the
    client refused nothing."""
    count = [0]

    def check() -> None:
        count[0] += 1
        if count[0] % 10_000 == 0:
            stats = client.stats
            if stats.dropped or stats.failed:
                raise AssertionError(f"events dropped: {stats.as_dict()}")

    if inspect.iscoroutinefunction(one):

        async def acall() -> None:
            await one()
            check()

        return acall

    def call() -> None:
        one()
        check()

    return call


class Captured(Protocol):
    def __len__(self) -> int: ...
    def clear(self) -> None: ...


def bounded(one: Callable[[], None], captured: Captured) -> Callable[[], None]:
    """``one`` (a metered request), checking that the first one produced its event and
    clearing ``captured`` (the "queue") every 10,000 requests."""
    count = [0]

    def call() -> None:
        one()
        count[0] += 1
        if count[0] == 1 and len(captured) != 1:
            raise AssertionError("the metered route did not produce its event")
        if count[0] % 10_000 == 0:
            captured.clear()

    return call


def bounded_async(
    one: Callable[[], Awaitable[None]], captured: Captured
) -> Callable[[], Awaitable[None]]:
    """:func:`bounded` for an ASGI request."""
    count = [0]

    async def call() -> None:
        await one()
        count[0] += 1
        if count[0] == 1 and len(captured) != 1:
            raise AssertionError("the metered route did not produce its event")
        if count[0] % 10_000 == 0:
            captured.clear()

    return call


# --------------------------------------------------------------------------- peers


def available_peers(
    peers: Mapping[str, tuple[str, str]],
) -> tuple[list[str], dict[str, str]]:
    """``peers`` (name -> (module, note)) split into the installed ones and name -> why not."""
    present, skipped = [], {}
    for name, (module, _what) in peers.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            present.append(name)
        else:
            skipped[name] = f"`{module}` is not installed (`make bench` installs it)"
    return present, skipped


def init_sentry(*integrations: Any) -> None:
    """sentry-sdk with every transaction traced (``traces_sample_rate=1.0``), DSN on the sink."""
    import sentry_sdk

    host = sink_url().removeprefix("http://")
    sentry_sdk.init(
        dsn=f"http://public@{host}/1", traces_sample_rate=1.0, integrations=list(integrations)
    )


def moesif_settings(logger: str, **extra: Any) -> dict[str, Any]:
    """Moesif's settings with ``BASE_URI`` on the sink; silences the ``logger`` it logs to."""
    logging.getLogger(logger).setLevel(logging.CRITICAL)
    return {"APPLICATION_ID": "bench-app-id", "BASE_URI": sink_url(), "LOG_BODY": True, **extra}


def teardown() -> None:
    """Close the delivering clients (and remove their spools), and Sentry's client (it
    flushes), if a case started them."""
    while _OPEN:
        client, directory = _OPEN.pop()
        try:
            client.close(2)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    try:
        import sentry_sdk

        client = sentry_sdk.get_client()
        if client.is_active():
            client.close(timeout=2)
    except Exception:
        pass


# --------------------------------------------------------------------------- run alone


def quick_loop(script: str, cases: Callable[[], Mapping[str, Callable[[], Any]]]) -> None:
    """A case module run as a script: ``[CASE] [--number N]``. With no case, every case in a
    process of its own (like the harness); with one, best of 5 loops of ``N`` requests (wall
    µs per request). Synchronous (WSGI) cases only."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("case", nargs="?")
    parser.add_argument("--number", type=int, default=20_000)
    args = parser.parse_args()
    if args.case is None:
        for name in cases():
            subprocess.run([sys.executable, script, name, "--number", str(args.number)])
        return
    fn = cases()[args.case]
    for _ in range(2000):
        fn()
    best = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(args.number):
            fn()
        best.append((time.perf_counter() - start) / args.number * 1e6)
    print(f"{args.case}: {min(best):.1f} µs/request (best of 5)")
    teardown()
