// The devserver dashboard: polls the JSON feed and rebuilds the page's tables from it.
// Every value is untrusted text (customer ids come from API clients): it is only ever set
// with textContent / attributes, never parsed as HTML. Same DOM as dashboard.py renders.
"use strict";
(() => {
  const body = document.body;
  const feed = body.dataset.feed;
  const every = Number(body.dataset.refreshMs) || 1500;
  const $ = (id) => document.getElementById(id);
  let updates = 0;

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function row(cells) {
    const tr = el("tr");
    tr.append(...cells);
    return tr;
  }

  function none(tag) {
    return el(tag || "td", "\u2013", "none");
  }

  function receivedTime(iso) {
    return iso.slice(11, 23).replace(/Z$/, "");
  }

  function renderTotals(d) {
    const table = $("totals");
    const head = row([el("th", "customer")]);
    for (const m of d.meters) {
      const th = el("th", m.name + " ");
      th.append(el("span", m.aggregation, "agg"));
      head.append(th);
    }
    table.tHead.replaceChildren(head);
    const rows = d.customers.map((c) =>
      row([
        el("td", c.external_id),
        ...d.meters.map((m) => (m.name in c.totals ? el("td", c.totals[m.name]) : none())),
      ]),
    );
    if (!rows.length) {
      const td = el("td", "no customers yet", "muted");
      td.colSpan = d.meters.length + 1;
      rows.push(row([td]));
    }
    table.tBodies[0].replaceChildren(...rows);
    table.tFoot.replaceChildren(
      row([
        el("th", "billable total"),
        ...d.meters.map((m) =>
          m.name in d.billable_totals ? el("th", d.billable_totals[m.name]) : none("th"),
        ),
      ]),
    );
    const shown = d.customers.length;
    $("customers-note").textContent =
      shown < d.customers_total ? `showing ${shown} of ${d.customers_total} customers` : "";
  }

  function renderEvents(d) {
    const rows = d.recent_events.map((ev) => {
      const received = el("td", receivedTime(ev.received_at));
      received.title = ev.received_at;
      let key;
      if (ev.idempotency_key === null) {
        key = none();
        key.className = "key none";
      } else {
        key = el("td", ev.idempotency_key, "key");
        key.title = ev.idempotency_key;
      }
      return row([
        received,
        el("td", ev.timestamp),
        el("td", ev.customer),
        el("td", ev.meter),
        el("td", ev.quantity, "q"),
        key,
      ]);
    });
    if (!rows.length) {
      const td = el("td", "no events yet", "muted");
      td.colSpan = 6;
      rows.push(row([td]));
    }
    $("events").tBodies[0].replaceChildren(...rows);
  }

  function renderFaults(d) {
    const f = d.faults;
    $("faults").className = f.active ? "on" : "off";
    $("fault-state").textContent = f.active
      ? "ON for /api/ requests:"
      : "off: every request is answered";
    $("fault-items").replaceChildren(...f.items.map((item) => el("li", item)));
  }

  function renderCounts(d) {
    $("events-stored").textContent = d.events_stored;
    $("track-requests").textContent = d.track_requests;
    const counts = Object.entries(d.track_responses).map(([k, v]) => `${k} \u00d7${v}`);
    $("track-responses").textContent = counts.length ? `(${counts.join(", ")})` : "";
  }

  function renderMeters(d) {
    const rows = d.meters.map((m) => {
      const token = el("td");
      token.append(el("code", m.token));
      const id = el("td");
      id.append(el("code", m.id));
      return row([el("td", m.name), el("td", m.aggregation), token, id]);
    });
    $("meters").tBodies[0].replaceChildren(...rows);
  }

  function setLive(text, state) {
    const live = $("live");
    live.textContent = text;
    live.className = state;
  }

  async function poll() {
    try {
      const response = await fetch(feed, { cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const d = await response.json();
      renderCounts(d);
      renderFaults(d);
      renderTotals(d);
      renderEvents(d);
      renderMeters(d);
      updates += 1;
      body.dataset.updates = String(updates);
      setLive(`live \u00b7 updated ${receivedTime(d.generated_at).slice(0, 8)} UTC`, "ok");
    } catch (err) {
      setLive(`cannot reach the devserver (${err.message}); retrying`, "err");
    } finally {
      setTimeout(poll, every);
    }
  }

  poll();
})();
