"""The load generator: paced requests from a few threads, each with its own keep-alive
connection, and a record of every answer (status, latency, what it bills).

The record is the generator's own account of what should be billed, computed from the
requests it sent and the answers it got (:meth:`AppSpec.bills`), never from fluxrate-web.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from _chaos.apps import AppSpec, Bill, Call


@dataclass(frozen=True, slots=True)
class Answer:
    sent: float  # seconds since the generator started
    latency: float  # seconds until the whole body was read
    status: int  # 0: no answer (refused, reset, timeout)
    phase: str
    kind: str
    bills: tuple[Bill, ...]
    error: str | None = None
    # no answer: the (customer, meter) pairs the request may have billed all the same
    unanswered: tuple[tuple[str, str], ...] = ()


@dataclass
class Record:
    answers: list[Answer] = field(default_factory=list)

    def expected(self) -> dict[tuple[str, str], tuple[int, Decimal]]:
        """``{(customer, meter): (events, total quantity)}`` the app must bill."""
        result: dict[tuple[str, str], tuple[int, Decimal]] = {}
        for answer in self.answers:
            for customer, meter, quantity in answer.bills:
                count, total = result.get((customer, meter), (0, Decimal(0)))
                result[(customer, meter)] = (count + 1, total + quantity)
        return result

    def unanswered(self) -> Counter[tuple[str, str]]:
        """``(customer, meter)`` -> requests without an answer that may have billed it."""
        return Counter(pair for a in self.answers for pair in a.unanswered)

    @property
    def events(self) -> int:
        return sum(len(a.bills) for a in self.answers)

    @property
    def requests(self) -> int:
        return len(self.answers)

    def statuses(self, phase: str | None = None) -> Counter[int]:
        return Counter(a.status for a in self.answers if phase is None or a.phase == phase)

    def errors(self, phase: str | None = None) -> list[Answer]:
        return [a for a in self.answers if a.status == 0 and (phase is None or a.phase == phase)]

    def latencies(self, phases: Iterable[str] | None = None) -> list[float]:
        wanted = None if phases is None else set(phases)
        return sorted(
            a.latency for a in self.answers if a.status and (wanted is None or a.phase in wanted)
        )

    def percentile(self, q: float, phases: Iterable[str] | None = None) -> float:
        values = self.latencies(phases)
        if not values:
            return float("nan")
        index = min(len(values) - 1, max(0, round(q / 100 * len(values) + 0.5) - 1))
        return values[index]

    def p99(self, phases: Iterable[str] | None = None) -> float:
        return self.percentile(99, phases)


class LoadGenerator:
    """``rate`` requests per second in total, from ``workers`` threads (each one request at a
    time on its own keep-alive connection). Arrivals are scheduled on a fixed grid: a thread
    that falls behind sends at once, so the offered rate holds as long as the app keeps up."""

    def __init__(
        self,
        spec: AppSpec,
        port: int,
        *,
        rate: float = 60.0,
        workers: int = 6,
        seed: int = 1,
        timeout: float = 15.0,
    ) -> None:
        self.spec = spec
        self.port = port
        self.rate = rate
        self.workers = workers
        self.seed = seed
        self.timeout = timeout
        self.phase = "load"
        self.record = Record()
        self._lock = threading.Lock()
        self._slot = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = 0.0

    def start(self) -> LoadGenerator:
        self._started = time.monotonic()
        for index in range(self.workers):
            thread = threading.Thread(
                target=self._run, args=(index,), name=f"chaos-load-{index}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        return self

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def stop(self) -> Record:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        return self.record

    def run_for(self, seconds: float) -> None:
        """Sleep ``seconds`` while the load runs (returns early if stopped)."""
        self._stop.wait(seconds)

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _next_slot(self) -> float:
        with self._lock:
            slot = self._slot
            self._slot += 1
        return self._started + slot / self.rate

    def _run(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        state: dict[str, object] = {}
        conn: http.client.HTTPConnection | None = None
        answers: list[Answer] = []
        try:
            while not self._stop.is_set():
                due = self._next_slot()
                delay = due - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                call = self.spec.next_call(rng, state)
                phase = self.phase
                sent = time.monotonic()
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                try:
                    status, body = self._send(conn, call)
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    conn = None
                    latency = time.monotonic() - sent
                    error = f"{type(exc).__name__}: {exc}"
                    answers.append(
                        Answer(
                            sent - self._started,
                            latency,
                            0,
                            phase,
                            call.kind,
                            (),
                            error,
                            self.spec.may_bill(call),
                        )
                    )
                    continue
                latency = time.monotonic() - sent
                bills = self.spec.bills(call, status, body)
                self.spec.seen(call, status, body, state)
                answers.append(
                    Answer(sent - self._started, latency, status, phase, call.kind, bills)
                )
        finally:
            if conn is not None:
                conn.close()
            with self._lock:
                self.record.answers.extend(answers)

    @staticmethod
    def _send(conn: http.client.HTTPConnection, call: Call) -> tuple[int, bytes]:
        conn.request(call.method, call.path, body=call.body, headers=dict(call.headers))
        response = conn.getresponse()
        body = response.read()
        if response.will_close:
            conn.close()
        return response.status, body
