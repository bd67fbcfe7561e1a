"""The dashboard: the HTML page at ``/`` and the JSON it polls (``/_dev/dashboard``).

The page shows customers x meters with their billable totals (each meter's aggregation
applied), the most recent events and the fault-injection state. It is rendered on the
server (so it reads fine without JavaScript, with a ``<noscript>`` meta refresh) and kept
current by ``/_dev/dashboard.js``, which fetches ``/_dev/dashboard?org=...`` every
``REFRESH_MS`` and rebuilds the tables with ``textContent`` (never ``innerHTML``): customer
ids are untrusted text. A Content-Security-Policy allows only same-origin scripts.

The totals are kept incrementally: each poll folds in only the events stored since the
previous one, so an open page costs next to nothing while a benchmark fills the store (and
a big backlog is folded in chunks, letting requests in between).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from html import escape
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from fluxrate_web.devserver.aggregate import Accumulator
from fluxrate_web.devserver.errors import ApiError
from fluxrate_web.devserver.faults import FaultInjector
from fluxrate_web.devserver.models import Org
from fluxrate_web.devserver.store import EventRow
from fluxrate_web.devserver.values import format_decimal, format_timestamp, now_utc
from fluxrate_web.devserver.web import api, dev_org, json_response

if TYPE_CHECKING:
    from fluxrate_web.devserver.web import DevState

REFRESH_MS = 1500
RECENT_EVENTS = 20
MAX_CUSTOMERS = 200  # rows on the page; every customer is in /_dev/summary
FOLD_CHUNK = 5000  # events folded into the totals between two turns of the event loop

FEED_PATH = "/_dev/dashboard"
SCRIPT_PATH = "/_dev/dashboard.js"
TIMES = "\u00d7"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; "
        "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


# -- the data ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _OrgView:
    accs: dict[tuple[str, str], Accumulator] = field(default_factory=dict)  # (customer, meter)
    recent: deque[EventRow] = field(default_factory=lambda: deque(maxlen=RECENT_EVENTS))
    events: int = 0


class DashboardFeed:
    """Builds the page's data: one ``await snapshot(org)`` per poll.

    Events are only ever appended (in ``seq`` order) or all deleted at once (reset), so the
    feed reads the events table in ``seq`` order from where it stopped and folds the new rows
    into per-organisation accumulators. The store's oldest event tells a reset apart (it
    changes), and a re-seed that changes a meter's aggregation starts the fold over. Reading
    the whole table in rowid order (not per organisation) keeps SQLite from sorting.
    """

    def __init__(self, state: DevState) -> None:
        self.state = state
        self._lock = asyncio.Lock()
        self._views: dict[str, _OrgView] = {}
        self._seen = 0  # rows of the events table folded in
        self._marker: tuple[int | None, frozenset[tuple[str, str]]] | None = None

    def _fold_chunk(self) -> bool:
        """Fold up to ``FOLD_CHUNK`` new rows; True when there may be more."""
        store = self.state.store
        oldest = next(store.events(limit=1), None)
        meters = store.meters_by_id
        marker = (
            oldest.seq if oldest is not None else None,
            frozenset((m.id, m.aggregation.value) for m in meters.values()),
        )
        if marker != self._marker:
            self._marker, self._views, self._seen = marker, {}, 0
        rows = list(store.events(limit=FOLD_CHUNK, offset=self._seen))
        self._seen += len(rows)
        views = self._views
        for row in rows:
            view = views.get(row.org_id)
            if view is None:
                view = views[row.org_id] = _OrgView()
            view.events += 1
            view.recent.append(row)
            key = (row.customer_id, row.meter_id)
            acc = view.accs.get(key)
            if acc is None:
                acc = view.accs[key] = Accumulator(meters[row.meter_id].aggregation)
            acc.add(row)
        return len(rows) == FOLD_CHUNK

    async def snapshot(self, org: Org) -> dict[str, Any]:
        async with self._lock:  # one fold at a time (two open pages poll concurrently)
            while True:
                if not self._fold_chunk():
                    break
                await asyncio.sleep(0)  # a big backlog: let requests in between chunks
            return self._build(org, self._views.get(org.id) or _OrgView())

    def _build(self, org: Org, view: _OrgView) -> dict[str, Any]:
        state = self.state
        store = state.store
        meters = sorted(store.meters(org.id), key=lambda m: m.name)
        meter_names = {m.id: m.name for m in meters}
        per_customer: dict[str, dict[str, str]] = {}
        billable: dict[str, Decimal] = {}  # meters with events: the sum of the customers' values
        for (customer_id, meter_id), acc in view.accs.items():
            value = acc.result()
            name = meter_names[meter_id]
            billable[name] = billable.get(name, Decimal(0)) + value
            per_customer.setdefault(customer_id, {})[name] = format_decimal(value)
        customers = sorted(store.customers(org.id), key=lambda c: c.external_id)
        recent = []
        for row in reversed(view.recent):
            customer = store.customers_by_id.get(row.customer_id)
            recent.append(
                {
                    "received_at": row.created_at,
                    "timestamp": row.timestamp,
                    "customer": customer.external_id if customer else row.customer_id,
                    "meter": meter_names.get(row.meter_id, row.meter_id),
                    "quantity": row.quantity,
                    "idempotency_key": row.idempotency_key,
                }
            )
        return {
            "org": org.name,
            "orgs": sorted(o.name for o in store.orgs.values()),
            "generated_at": format_timestamp(now_utc()),
            "refresh_ms": REFRESH_MS,
            "meters": [
                {"name": m.name, "aggregation": m.aggregation.value, "token": m.token, "id": m.id}
                for m in meters
            ],
            "customers": [
                {"external_id": c.external_id, "totals": per_customer.get(c.id, {})}
                for c in customers[:MAX_CUSTOMERS]
            ],
            "customers_total": len(customers),
            "billable_totals": {name: format_decimal(v) for name, v in billable.items()},
            "events_stored": view.events,
            "recent_events": recent,
            "track_requests": state.service.track_requests,
            "track_responses": dict(sorted(state.track_responses.items())),
            "faults": describe_faults(state.faults),
        }


def _share(rate: float) -> str:
    return f"{rate * 100:.4g}%"


def _seconds(value: float) -> str:
    return f"{value:g} s"


def describe_faults(faults: FaultInjector) -> dict[str, Any]:
    """The fault-injection state, with one human-readable line per fault that is on."""
    s = faults.settings
    remaining = faults.outage_remaining()
    items = []
    if s.outage_seconds > 0:
        if remaining > 0:
            items.append(
                f"outage_seconds={s.outage_seconds:g}: every /api/ request answered "
                f"{s.status}, {remaining:.1f} s remaining"
            )
        else:
            items.append(f"outage_seconds={s.outage_seconds:g}: the outage window is over")
    if s.error_rate > 0:
        items.append(f"error_rate={s.error_rate:g}: {_share(s.error_rate)} answered {s.status}")
    if s.rate_limit_rate > 0:
        items.append(
            f"rate_limit_rate={s.rate_limit_rate:g}: {_share(s.rate_limit_rate)} answered 429 "
            f"with Retry-After {_seconds(s.retry_after)}"
        )
    if s.drop_rate > 0:
        items.append(
            f"drop_rate={s.drop_rate:g}: {_share(s.drop_rate)} dropped (connection closed, "
            f"no answer)"
        )
    if s.stored_drop_rate > 0:
        items.append(
            f"stored_drop_rate={s.stored_drop_rate:g}: {_share(s.stored_drop_rate)} stored, "
            f"then the connection is closed unanswered"
        )
    if s.latency_ms > 0:
        items.append(
            f"latency_ms={s.latency_ms:g}: every /api/ request delayed {s.latency_ms:g} ms"
        )
    return {
        "active": faults.active,
        "outage_remaining": round(remaining, 3),
        "items": items,
        "settings": s.to_dict(),
    }


# -- the page ---------------------------------------------------------------------------------

_STYLE = """
:root{color-scheme:light}
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em 2em;color:#1d1d1f;background:#fff}
h1{font-size:1.5em;margin:0 .6em 0 0;display:inline}
h2{font-size:1.1em;margin:1.4em 0 .4em}
header{display:flex;align-items:baseline;flex-wrap:wrap;gap:.4em}
.muted,.agg{color:#777}.agg{font-size:11px;font-weight:normal}
#live{font-size:12px;padding:.1em .6em;border-radius:1em;background:#eee;color:#555}
#live.ok{background:#e3f4e6;color:#1e6b2e}#live.err{background:#fde8e6;color:#a3261b}
table{border-collapse:collapse;margin:.2em 0}
th,td{border:1px solid #d8d8d8;padding:.25em .7em;white-space:nowrap}
th{background:#f4f4f6;text-align:left}
#totals td,#totals tfoot th{text-align:right;font-variant-numeric:tabular-nums}
#totals td:first-child,#totals tfoot th:first-child{text-align:left}
#totals tfoot th{background:#fafafa}
td.none,th.none{color:#bbb}
#events td.q{text-align:right;font-variant-numeric:tabular-nums}
#events td.key{max-width:24em;overflow:hidden;text-overflow:ellipsis;font:12px monospace}
code{font-size:12px}
#faults{border:1px solid #d8d8d8;border-radius:6px;padding:.5em 1em;margin:1em 0;max-width:60em}
#faults.on{border-color:#e0a000;background:#fff8e1}
#faults h2{margin:0 0 .2em;font-size:1em}
#faults ul{margin:.2em 0;padding-left:1.2em}
"""


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _totals_table(data: dict[str, Any]) -> str:
    meters = data["meters"]
    head = "".join(
        f"<th>{_e(m['name'])} <span class=agg>{_e(m['aggregation'])}</span></th>" for m in meters
    )
    rows = []
    for customer in data["customers"]:
        cells = "".join(
            f"<td>{_e(customer['totals'][m['name']])}</td>"
            if m["name"] in customer["totals"]
            else "<td class=none>&ndash;</td>"
            for m in meters
        )
        rows.append(f"<tr><td>{_e(customer['external_id'])}</td>{cells}</tr>")
    if not rows:
        rows.append(f"<tr><td colspan={len(meters) + 1} class=muted>no customers yet</td></tr>")
    billable = data["billable_totals"]
    foot = "".join(
        f"<th>{_e(billable[m['name']])}</th>"
        if m["name"] in billable
        else "<th class=none>&ndash;</th>"
        for m in meters
    )
    return (
        f"<table id=totals><thead><tr><th>customer</th>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody>"
        f"<tfoot><tr><th>billable total</th>{foot}</tr></tfoot></table>"
    )


def _customers_note(data: dict[str, Any]) -> str:
    shown, total = len(data["customers"]), data["customers_total"]
    return f"showing {shown} of {total} customers" if shown < total else ""


def _recent_table(data: dict[str, Any]) -> str:
    rows = []
    for ev in data["recent_events"]:
        key = ev["idempotency_key"]
        key_cell = (
            f"<td class=key title='{_e(key)}'>{_e(key)}</td>"
            if key is not None
            else "<td class='key none'>&ndash;</td>"
        )
        rows.append(
            f"<tr><td title='{_e(ev['received_at'])}'>{_e(received_time(ev['received_at']))}</td>"
            f"<td>{_e(ev['timestamp'])}</td><td>{_e(ev['customer'])}</td>"
            f"<td>{_e(ev['meter'])}</td><td class=q>{_e(ev['quantity'])}</td>{key_cell}</tr>"
        )
    if not rows:
        rows.append("<tr><td colspan=6 class=muted>no events yet</td></tr>")
    return (
        "<table id=events><thead><tr><th>received (UTC)</th><th>timestamp</th><th>customer</th>"
        "<th>meter</th><th>quantity</th><th>idempotency key</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def received_time(iso: str) -> str:
    """``2026-11-27T15:14:24.123456Z`` -> ``15:14:24.123`` (the page's "received" column)."""
    return iso[11:23].rstrip("Z")


def _faults_box(data: dict[str, Any]) -> str:
    faults = data["faults"]
    items = "".join(f"<li>{_e(item)}</li>" for item in faults["items"])
    state = "on" if faults["active"] else "off"
    summary = "ON for /api/ requests:" if faults["active"] else "off: every request is answered"
    return (
        f"<section id=faults class={state}><h2>Fault injection</h2>"
        f"<div id=fault-state>{summary}</div><ul id=fault-items>{items}</ul></section>"
    )


def _counts(data: dict[str, Any]) -> str:
    responses = track_responses_text(data["track_responses"])
    return (
        f"events stored: <b id=events-stored>{data['events_stored']}</b> · "
        f"/sdk/track requests: <b id=track-requests>{data['track_requests']}</b> "
        f"<span id=track-responses class=muted>{_e(responses)}</span>"
    )


def track_responses_text(counts: dict[str, int]) -> str:
    """``{"201": 40, "503": 9}`` -> ``(201 x40, 503 x9)`` (with a multiplication sign)."""
    if not counts:
        return ""
    return "(" + ", ".join(f"{k} {TIMES}{v}" for k, v in counts.items()) + ")"


def render_page(data: dict[str, Any]) -> str:
    org = data["org"]
    orgs = " · ".join(
        f'<a href="/?org={_e(quote(name, safe=""))}">{_e(name)}</a>' for name in data["orgs"]
    )
    tokens = "".join(
        f"<tr><td>{_e(m['name'])}</td><td>{_e(m['aggregation'])}</td>"
        f"<td><code>{_e(m['token'])}</code></td><td><code>{_e(m['id'])}</code></td></tr>"
        for m in data["meters"]
    )
    feed = f"{FEED_PATH}?org={quote(org, safe='')}"
    return f"""<!doctype html>
<html lang=en><head><meta charset="utf-8">
<meta name=viewport content="width=device-width,initial-scale=1">
<noscript><meta http-equiv="refresh" content="{REFRESH_MS // 1000 + 1}"></noscript>
<title>Fluxrate devserver · {_e(org)}</title>
<link rel=icon href="data:,">
<style>{_STYLE}</style>
<script src="{SCRIPT_PATH}" defer></script>
</head>
<body data-feed="{_e(feed)}" data-refresh-ms="{REFRESH_MS}">
<header><h1>Fluxrate devserver</h1><span id=live>static page</span></header>
<p>Organization <b>{_e(org)}</b> <span class=muted>({orgs})</span> ·
<span id=counts>{_counts(data)}</span></p>
{_faults_box(data)}
<h2>Billable totals <span class=muted>(each meter's aggregation per customer)</span></h2>
{_totals_table(data)}
<p id=customers-note class=muted>{_customers_note(data)}</p>
<h2>Recent events <span class=muted>(newest first, last {RECENT_EVENTS})</span></h2>
{_recent_table(data)}
<h2>Meters</h2>
<table id=meters><thead><tr><th>meter</th><th>aggregation</th><th>meter_token</th>
<th>meter_id</th></tr></thead><tbody>{tokens}</tbody></table>
<p class=muted>This page polls <a href="{_e(feed)}">{FEED_PATH}</a> every
{REFRESH_MS / 1000:g} s. More JSON: <a href="/_dev/summary">/_dev/summary</a>,
<a href="/_dev/events">/_dev/events</a>, <a href="/_dev/stats">/_dev/stats</a>.</p>
</body></html>
"""


def _script() -> bytes:
    return resources.files("fluxrate_web.devserver").joinpath("dashboard.js").read_bytes()


def dashboard_routes(state: DevState) -> list[Route]:
    """``/`` (the page), ``/_dev/dashboard`` (its JSON) and ``/_dev/dashboard.js``."""
    feed = DashboardFeed(state)
    script = _script()

    async def page(request: Request) -> Response:
        try:
            org = dev_org(state, request)
        except ApiError as exc:
            return HTMLResponse(_e(exc.detail), 404, headers=SECURITY_HEADERS)
        return HTMLResponse(render_page(await feed.snapshot(org)), headers=SECURITY_HEADERS)

    @api
    async def data(request: Request) -> Response:
        data = await feed.snapshot(dev_org(state, request))
        return json_response(data, headers=SECURITY_HEADERS)

    async def javascript(request: Request) -> Response:
        return Response(
            script, media_type="text/javascript; charset=utf-8", headers=SECURITY_HEADERS
        )

    return [
        Route("/", page, methods=["GET"]),
        Route(FEED_PATH, data, methods=["GET"]),
        Route(SCRIPT_PATH, javascript, methods=["GET"]),
    ]
