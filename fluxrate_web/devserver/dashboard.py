"""The HTML page at ``/``: customers x meters with their billable totals, auto-refreshing."""

from __future__ import annotations

from decimal import Decimal
from html import escape
from typing import TYPE_CHECKING

from fluxrate_web.devserver.models import Org
from fluxrate_web.devserver.values import format_decimal

if TYPE_CHECKING:
    from fluxrate_web.devserver.app import DevState

REFRESH_SECONDS = 2

_STYLE = """
body{font:14px system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #ccc;padding:.3em .8em;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#f3f3f3} code{font-size:12px} .muted{color:#888}
"""


def render_dashboard(state: DevState, org: Org, summary: dict[str, dict[str, Decimal]]) -> str:
    meters = sorted(state.store.meters(org.id), key=lambda m: m.name)
    head = "".join(
        f"<th>{escape(m.name)}<br><span class=muted>{m.aggregation}</span></th>" for m in meters
    )
    rows = []
    for customer, totals in sorted(summary.items()):
        cells = "".join(
            f"<td>{format_decimal(totals[m.name])}</td>"
            if m.name in totals
            else "<td class=muted>&ndash;</td>"
            for m in meters
        )
        rows.append(f"<tr><td>{escape(customer)}</td>{cells}</tr>")
    if not rows:
        rows.append(f"<tr><td colspan={len(meters) + 1} class=muted>no customers yet</td></tr>")
    tokens = "".join(
        f"<tr><td>{escape(m.name)}</td><td><code>{escape(m.token)}</code></td>"
        f"<td><code>{escape(m.id)}</code></td></tr>"
        for m in meters
    )
    faults = state.faults.describe()
    fault_text = (
        ", ".join(f"{k}={v}" for k, v in faults.items() if k != "active" and v)
        if faults["active"]
        else "none"
    )
    orgs = " · ".join(
        f'<a href="/?org={escape(o.name)}">{escape(o.name)}</a>' for o in state.store.orgs.values()
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<title>Fluxrate devserver · {escape(org.name)}</title><style>{_STYLE}</style></head>
<body>
<h1>Fluxrate devserver</h1>
<p>Organization <b>{escape(org.name)}</b> <span class=muted>({orgs})</span> ·
events stored: {state.store.count_events(org_id=org.id)} ·
track requests received: {state.service.track_requests} · faults: {escape(fault_text)}</p>
<h2>Billable totals</h2>
<table><tr><th>customer</th>{head}</tr>{"".join(rows)}</table>
<h2>Meters</h2>
<table><tr><th>meter</th><th>meter_token</th><th>meter_id</th></tr>{tokens}</table>
<p class=muted>Refreshes every {REFRESH_SECONDS} s. JSON: <a href="/_dev/summary">/_dev/summary</a>,
<a href="/_dev/events">/_dev/events</a>, <a href="/_dev/stats">/_dev/stats</a>.</p>
</body></html>
"""
