"""The dashboard in a real headless browser (Debian's Chromium), driven with no driver.

``chromium --headless=new --dump-dom URL`` prints the DOM after the page's scripts ran; with
``--virtual-time-budget`` the page's timers run (fast-forwarded) before the dump, so the DOM
is what a person would see after the page refreshed itself a few times.

Chromium is installed here when missing (``apt-get install chromium``, as root); the tests
skip with the reason when it cannot be.
"""

from __future__ import annotations

import fcntl
import http.client
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from fluxrate_web.devserver import DevServer

from .conftest import TRACK

log = logging.getLogger(__name__)

# apt may download ~100 MB the first time; a test's default timeout (120 s) would cut it short
pytestmark = pytest.mark.timeout(900)

APT_TIMEOUT = 600
APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


def _apt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["apt-get", *args],
        env=APT_ENV,
        capture_output=True,
        text=True,
        timeout=APT_TIMEOUT,
        check=False,
    )


def _install_chromium() -> str:
    """Install Debian's ``chromium`` package; returns why it failed ("" on success)."""
    if os.geteuid() != 0:
        return "chromium is not installed and we are not root (apt-get install chromium)"
    if shutil.which("apt-get") is None:
        return "chromium is not installed and there is no apt-get"
    # one installer at a time (pytest-xdist workers share the dpkg lock)
    with open("/tmp/fluxrate-web-chromium-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if shutil.which("chromium"):
            return ""
        started = time.monotonic()
        result = _apt("install", "-y", "-qq", "chromium")
        if result.returncode != 0:  # e.g. "Unable to locate package": stale package lists
            _apt("update", "-qq")
            result = _apt("install", "-y", "-qq", "chromium")
        took = time.monotonic() - started
        if result.returncode != 0 or shutil.which("chromium") is None:
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            return f"apt-get install chromium failed after {took:.0f} s: {' / '.join(tail)}"
        log.warning("installed chromium with apt-get in %.1f s", took)
        return ""


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of Debian's Chromium, installed first when missing (skip if it cannot be)."""
    if shutil.which("chromium") is None:
        try:
            why = _install_chromium()
        except (OSError, subprocess.TimeoutExpired) as exc:
            why = f"apt-get install chromium failed: {exc}"
        if why:
            pytest.skip(why)
    path = shutil.which("chromium")
    assert path is not None
    return path


# -- driving the browser ----------------------------------------------------------------------

BUDGET_MS = 5000  # virtual time: the page polls every 1.5 s, so it refreshes ~3 times


def chromium_args(chromium: str, profile: Path, *extra: str) -> list[str]:
    return [
        chromium,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={BUDGET_MS}",
        *extra,
    ]


def dump_dom(chromium: str, profile: Path, url: str) -> Element:
    out = subprocess.run(
        chromium_args(chromium, profile, "--dump-dom", url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "<body" in out.stdout, out.stderr[-3000:]
    return parse(out.stdout)


# -- reading the dumped DOM -------------------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list[Element | str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    def iter(self) -> Iterator[Element]:
        yield self
        for child in self.children:
            if isinstance(child, Element):
                yield from child.iter()

    def find_all(self, tag: str) -> list[Element]:
        return [e for e in self.iter() if e.tag == tag]

    def by_id(self, id_: str) -> Element:
        found = [e for e in self.iter() if e.attrs.get("id") == id_]
        assert len(found) == 1, f"{len(found)} elements with id={id_!r}"
        return found[0]

    def rows(self, section: str) -> list[list[str]]:
        """A table's ``thead``/``tbody``/``tfoot`` as lists of cell texts."""
        (part,) = self.find_all(section)
        return [
            [c.text for c in tr.children if isinstance(c, Element) and c.tag in ("td", "th")]
            for tr in part.find_all("tr")
        ]


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(element)
        if tag not in VOID:
            self.stack.append(element)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(html: str) -> Element:
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


# -- a burst of events ------------------------------------------------------------------------

EVIL = '"><img id=pwned src=x onerror="document.title=1"><script>document.title=2</script>'


@dataclass
class Burst:
    totals: list[list[str]]  # the totals table a person should see (customers sorted)
    billable: list[str]
    last: list[str]  # the newest event's row (minus the received time)
    count: int


def send_burst(server: DevServer, http: httpx.Client) -> Burst:
    """Over real HTTP: every meter, three customers (one with a hostile id)."""
    sent = 0

    def track(meter: str, customer: str, quantity: float, **extra: Any) -> None:
        nonlocal sent
        body = {
            "meter_token": server.meter_token(meter),
            "customer_external_id": customer,
            "quantity": quantity,
            **extra,
        }
        assert http.post(TRACK, json=body).status_code == 201
        sent += 1

    for i, q in enumerate((1, 2, 3.5)):
        track("api_calls", "acme", q, idempotency_key=f"acme-call-{i}")
    track("api_calls", "globex", 10)
    track("api_calls", EVIL, 2)
    for q in (3, 9, 4):
        track("peak", "acme", q)
    for user in ("u1", "u2", "u1", 7, "7"):
        track("seats", "acme", 1, metadata={"user_id": user})
    track("level", "globex", 5, timestamp="2026-01-01T00:00:01Z")
    track("level", "globex", 8, timestamp="2026-01-01T00:00:02Z")
    track("level", "globex", 100, timestamp="2026-01-01T00:00:00Z")  # older: not the LAST
    track("peak", "globex", 1.25, timestamp="2026-02-03T04:05:06.789Z", idempotency_key="k-last")
    dash = "\u2013"
    return Burst(
        # columns: customer, api_calls SUM, level LAST, peak MAX, seats UNIQUE_COUNT
        totals=[
            [EVIL, "2", dash, dash, dash],
            ["acme", "6.5", dash, "9", "4"],
            ["globex", "10", "8", "1.25", dash],
        ],
        billable=["billable total", "18.5", "8", "10.25", "4"],
        last=["2026-02-03T04:05:06.789Z", "globex", "peak", "1.25", "k-last"],
        count=sent,
    )


def check_totals(page: Element, burst: Burst) -> None:
    table = page.by_id("totals")
    assert table.rows("thead") == [
        ["customer", "api_calls SUM", "level LAST", "peak MAX", "seats UNIQUE_COUNT"]
    ]
    assert table.rows("tbody") == burst.totals
    assert table.rows("tfoot") == [burst.billable]


# -- the tests --------------------------------------------------------------------------------


def test_dashboard_after_a_burst_with_faults_on(
    chromium: str, server: DevServer, client: httpx.Client, tmp_path: Path
) -> None:
    burst = send_burst(server, client)
    server.set_faults(error_rate=0.25, status=500, outage_seconds=60)
    served = parse(client.get("/").text)  # what the server rendered, before any script ran

    page = dump_dom(chromium, tmp_path, server.url + "/")

    # the page's script ran and refreshed it from the JSON feed, more than once
    body = page.find_all("body")[0]
    assert int(body.attrs["data-updates"]) >= 2, body.attrs
    live = page.by_id("live")
    assert live.attrs["class"] == "ok"
    assert live.text.startswith("live \u00b7 updated ")
    # customers x meters with each meter's aggregation applied (and the script's tables are
    # the server's tables)
    check_totals(page, burst)
    check_totals(served, burst)
    # the hostile customer id is text: no element of it, the title untouched
    assert [e for e in page.iter() if e.attrs.get("id") == "pwned"] == []
    assert page.find_all("title")[0].text == "Fluxrate devserver \u00b7 default"
    assert len(page.find_all("script")) == 1
    # the most recent events, newest first
    events = page.by_id("events")
    assert events.rows("thead") == [
        ["received (UTC)", "timestamp", "customer", "meter", "quantity", "idempotency key"]
    ]
    rows = events.rows("tbody")
    assert len(rows) == 17 == burst.count
    assert rows[0][1:] == burst.last
    assert rows[-1][2:] == ["acme", "api_calls", "1", "acme-call-0"]
    assert [r[2] for r in rows].count(EVIL) == 1
    assert all(len(r[0]) == len("16:54:51.686") for r in rows), rows
    # counters and the fault-injection state
    assert page.by_id("events-stored").text == str(burst.count)
    assert page.by_id("track-requests").text == str(burst.count)
    assert page.by_id("track-responses").text == f"(201 \u00d7{burst.count})"
    faults = page.by_id("faults")
    assert faults.attrs["class"] == "on"
    assert page.by_id("fault-state").text == "ON for /api/ requests:"
    items = [li.text for li in page.by_id("fault-items").find_all("li")]
    assert len(items) == 2
    assert items[0].startswith("outage_seconds=60: every /api/ request answered 500, ")
    remaining = float(items[0].rsplit(", ", 1)[1].removesuffix(" s remaining"))
    assert 40 < remaining <= 60
    assert items[1] == "error_rate=0.25: 25% answered 500"


class _GatedProxy(BaseHTTPRequestHandler):
    """Forwards to the devserver; holds the page's first poll of the feed until released."""

    upstream: tuple[str, int]
    polled: threading.Event
    release: threading.Event

    def do_GET(self) -> None:
        if self.path.startswith("/_dev/dashboard?") and not self.polled.is_set():
            self.polled.set()
            self.release.wait(30)
        conn = http.client.HTTPConnection(*self.upstream, timeout=10)
        try:
            conn.request("GET", self.path)
            response = conn.getresponse()
            body = response.read()
            headers = response.getheaders()
        finally:
            conn.close()
        self.send_response(response.status)
        for name, value in headers:
            if name.lower() not in ("connection", "transfer-encoding", "date", "server"):
                self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def gated_proxy(server: DevServer) -> Iterator[tuple[str, threading.Event, threading.Event]]:
    polled, release = threading.Event(), threading.Event()
    parts = urlsplit(server.url)
    assert parts.hostname is not None
    assert parts.port is not None
    handler = type(
        "Gate",
        (_GatedProxy,),
        {"upstream": (parts.hostname, parts.port), "polled": polled, "release": release},
    )
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    proxy.daemon_threads = True
    thread = threading.Thread(target=proxy.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{proxy.server_address[1]}", polled, release
    finally:
        release.set()
        proxy.shutdown()
        proxy.server_close()
        thread.join(10)


def test_a_new_event_shows_up_without_reloading(
    chromium: str,
    server: DevServer,
    client: httpx.Client,
    gated_proxy: tuple[str, threading.Event, threading.Event],
    tmp_path: Path,
) -> None:
    """The page is served, then an event is stored, then the page's poll brings it in.

    The page goes through a loopback proxy that holds its first poll of the JSON feed until
    the test has posted the new event: so the event is certainly newer than the page, and
    Chromium's virtual time stands still while the poll is held (no race either way).
    """
    url, polled, release = gated_proxy
    burst = send_burst(server, client)
    browser = subprocess.Popen(
        chromium_args(chromium, tmp_path, "--dump-dom", url + "/"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert polled.wait(30), "the page never polled its feed"
        newer = {
            "meter_token": server.meter_token("api_calls"),
            "customer_external_id": "newcomer",
            "quantity": 42,
            "idempotency_key": "after-page-load",
        }
        assert client.post(TRACK, json=newer).status_code == 201
        release.set()
        stdout, stderr = browser.communicate(timeout=60)
    finally:
        if browser.poll() is None:
            browser.kill()
            browser.communicate()
    assert browser.returncode == 0, stderr[-3000:]
    page = parse(stdout)
    # stored after the page was served, shown by the page's own poll
    totals = page.by_id("totals").rows("tbody")
    assert ["newcomer", "42", "\u2013", "\u2013", "\u2013"] in totals
    assert len(totals) == len(burst.totals) + 1
    assert page.by_id("totals").rows("tfoot") == [["billable total", "60.5", *burst.billable[2:]]]
    newest = page.by_id("events").rows("tbody")[0]
    assert newest[2:] == ["newcomer", "api_calls", "42", "after-page-load"]
    assert page.by_id("events-stored").text == str(burst.count + 1)
    assert page.by_id("live").attrs["class"] == "ok"
