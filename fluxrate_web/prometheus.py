"""Delivery metrics for Prometheus: ``pip install "fluxrate-web[prometheus]"``.

::

    from fluxrate_web.prometheus import register

    register(metering)      # a Metering, a FluxrateClient, or a function returning one

exports the delivery counters of ``client.stats`` under the ``fluxrate_`` prefix, read at scrape
time (nothing is counted twice and nothing runs between scrapes):

==========================================  =======  ===========================================
metric                                      type     from
==========================================  =======  ===========================================
``fluxrate_events_enqueued_total``          counter  ``stats.enqueued``
``fluxrate_events_delivered_total``         counter  ``stats.delivered``
``fluxrate_events_deduplicated_total``      counter  ``stats.deduplicated``
``fluxrate_events_retried_total``           counter  ``stats.retried``
``fluxrate_events_failed_total``            counter  ``stats.failed``
``fluxrate_events_dropped_total``           counter  ``stats.dropped``
``fluxrate_events_pending``                 gauge    ``stats.pending``
``fluxrate_queue_depth``                    gauge    ``stats.queue_depth``
``fluxrate_queue_capacity``                 gauge    ``max_queue_size``
``fluxrate_delivery_latency_seconds``       histo.   ``stats.latency``, when the client has it
``fluxrate_aggregation_*``                  mixed    pre-aggregation counters, when enabled
``fluxrate_events_spooled_total``, ...      mixed    the disk spool (``durability``), when on
``fluxrate_client_<name>``                  gauge    any other number of ``stats.as_dict()``
==========================================  =======  ===========================================

Every sample has a ``client`` label (``"default"`` unless named), so one collector can watch
several clients. See ``docs/metrics.md`` for the setup per framework and for what healthy and
unhealthy numbers look like.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

__all__ = ["FluxrateCollector", "register"]

logger = logging.getLogger("fluxrate_web.prometheus")

PREFIX = "fluxrate"

# stats attribute -> (metric name without prefix and _total, help)
_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("enqueued", "events_enqueued", "Usage events accepted into the delivery queue."),
    ("delivered", "events_delivered", "Usage events the API accepted as new."),
    (
        "deduplicated",
        "events_deduplicated",
        "Usage events the API already had (same idempotency key): delivered before.",
    ),
    ("retried", "events_retried", "Delivery attempts scheduled again after a retryable failure."),
    ("failed", "events_failed", "Usage events written to the failure log, whatever the reason."),
    (
        "dropped",
        "events_dropped",
        "Usages refused before delivery (invalid input, no customer, no quantity).",
    ),
)
# gauges: stats attribute (or reading) -> (metric name without prefix, help)
_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("pending", "events_pending", "Usage events queued, in flight or waiting to retry right now."),
    ("queue_depth", "queue_depth", "Usage events waiting in the queue for a delivery worker."),
    (
        "queue_capacity",
        "queue_capacity",
        "max_queue_size: beyond it, new events go to the failure log (queue_full).",
    ),
)
_AGGREGATION_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("folded", "aggregation_folded", "Usages folded into a pre-aggregate instead of sent singly."),
    ("aggregates", "aggregation_emitted", "Pre-aggregates emitted as events for delivery."),
)

_SPOOL_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("spooled", "events_spooled", "Usage events written to the disk spool's backlog."),
    ("adopted", "events_adopted", "Usage events adopted from the spools of ended processes."),
)

_KNOWN = frozenset(
    [attr for attr, _m, _h in (*_COUNTERS, *_GAUGES, *_AGGREGATION_COUNTERS, *_SPOOL_COUNTERS)]
    + ["aggregates_open", "spool_backlog"]
)

Source = Any
"""What the collector reads: a ``FluxrateClient`` (or anything with ``.stats``), a ``Metering``
(its ``.client``), or a function of no argument returning either (called at every scrape)."""


def _client_of(source: Source) -> Any:
    """The object whose ``.stats`` we read (``None``: nothing to read right now)."""
    target = source
    if callable(target) and not hasattr(target, "stats") and not hasattr(target, "client"):
        target = target()
    if target is not None and not hasattr(target, "stats") and hasattr(target, "client"):
        target = target.client  # a Metering
    return target if hasattr(target, "stats") else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _histogram_buckets(latency: Any) -> tuple[list[tuple[str, float]], float] | None:
    """``latency.buckets`` (ascending upper bounds, seconds), ``latency.counts`` (events per
    bucket, not cumulative) and ``latency.sum`` (seconds) as Prometheus cumulative buckets."""
    bounds: Sequence[float] = getattr(latency, "buckets", ())
    counts: Sequence[int] = getattr(latency, "counts", ())
    total = _number(getattr(latency, "sum", None))
    if not bounds or len(bounds) != len(counts) or total is None:
        return None
    buckets: list[tuple[str, float]] = []
    running = 0.0
    for bound, count in zip(bounds, counts, strict=True):
        running += count
        label = "+Inf" if math.isinf(bound) else repr(float(bound))
        buckets.append((label, running))
    if buckets[-1][0] != "+Inf":
        buckets.append(("+Inf", running))
    return buckets, total


class FluxrateCollector:
    """A Prometheus collector of fluxrate-web delivery statistics.

    ``FluxrateCollector(source, name="default")``; more sources with :meth:`add` (each its own
    ``client`` label value). Register it with ``REGISTRY.register(collector)`` or use
    :func:`register`. Reading never raises into a scrape: a source that cannot be read right
    now (e.g. a configuration error) is left out, with one WARNING until it can be read again.
    """

    def __init__(self, source: Source | None = None, *, name: str = "default") -> None:
        self._lock = threading.Lock()
        self._sources: dict[str, Source] = {}
        self._failing: set[str] = set()
        if source is not None:
            self.add(source, name=name)

    def add(self, source: Source, *, name: str = "default") -> None:
        """Watch ``source`` under ``client="<name>"`` (replaces a source of that name)."""
        if not isinstance(name, str) or not name:
            raise ValueError("name: expected a non-empty string")
        with self._lock:
            self._sources[name] = source

    def remove(self, name: str = "default") -> None:
        """Stop watching the source named ``name`` (no error if there is none)."""
        with self._lock:
            self._sources.pop(name, None)

    def describe(self) -> Iterable[Metric]:
        """The metric families, without samples (lets a registry check names at register time
        without reading any client)."""
        counters, gauges = self._families()
        return [*counters.values(), *gauges.values()]

    @staticmethod
    def _families() -> tuple[dict[str, CounterMetricFamily], dict[str, GaugeMetricFamily]]:
        counters = {
            attr: CounterMetricFamily(f"{PREFIX}_{metric}", help_text, labels=["client"])
            for attr, metric, help_text in _COUNTERS
        }
        gauges = {
            attr: GaugeMetricFamily(f"{PREFIX}_{metric}", help_text, labels=["client"])
            for attr, metric, help_text in _GAUGES
        }
        return counters, gauges

    def collect(self) -> Iterator[Metric]:
        counters, gauges = self._families()
        extra = _Extra()
        with self._lock:
            sources = list(self._sources.items())
        for name, source in sources:
            try:
                client = _client_of(source)
                if client is not None:
                    _read(name, client, counters, gauges, extra)
            except Exception:
                if name not in self._failing:
                    self._failing.add(name)
                    logger.warning(
                        "fluxrate: cannot read the delivery stats of client %r", name, exc_info=True
                    )
                continue
            self._failing.discard(name)
        yield from counters.values()
        yield from gauges.values()
        yield from extra.families()


class _Extra:
    """Families that exist only when some client has them (pre-aggregation, latency)."""

    def __init__(self) -> None:
        self.counters: dict[str, CounterMetricFamily] = {}
        self.gauges: dict[str, GaugeMetricFamily] = {}
        self.latency: HistogramMetricFamily | None = None

    def counter(self, metric: str, help_text: str) -> CounterMetricFamily:
        family = self.counters.get(metric)
        if family is None:
            family = self.counters[metric] = CounterMetricFamily(
                f"{PREFIX}_{metric}", help_text, labels=["client"]
            )
        return family

    def gauge(self, metric: str, help_text: str) -> GaugeMetricFamily:
        family = self.gauges.get(metric)
        if family is None:
            family = self.gauges[metric] = GaugeMetricFamily(
                f"{PREFIX}_{metric}", help_text, labels=["client"]
            )
        return family

    def histogram(self) -> HistogramMetricFamily:
        if self.latency is None:
            self.latency = HistogramMetricFamily(
                f"{PREFIX}_delivery_latency_seconds",
                "Seconds from enqueue to the API's answer, per event delivered or deduplicated.",
                labels=["client"],
            )
        return self.latency

    def families(self) -> list[Metric]:
        found: list[Metric] = [*self.counters.values(), *self.gauges.values()]
        if self.latency is not None:
            found.append(self.latency)
        return found


def _read(
    name: str,
    client: Any,
    counters: dict[str, CounterMetricFamily],
    gauges: dict[str, GaugeMetricFamily],
    extra: _Extra,
) -> None:
    """Add one client's samples (one ``as_dict()`` snapshot where the stats offer it)."""
    stats = client.stats
    as_dict: Callable[[], dict[str, Any]] | None = getattr(stats, "as_dict", None)
    values: dict[str, Any] = dict(as_dict()) if as_dict is not None else {}

    def value(attr: str) -> float | None:
        return _number(values[attr] if attr in values else getattr(stats, attr, None))

    def optional(attr: str) -> float | None:
        """A counter that exists only when the client uses it: ``as_dict()`` lists it then."""
        return _number(values.get(attr)) if as_dict is not None else value(attr)

    labels = [name]
    for attr, family in counters.items():
        number = value(attr)
        if number is not None:
            family.add_metric(labels, number)
    readings = {
        "pending": value("pending"),
        "queue_depth": value("queue_depth"),
        "queue_capacity": _number(
            getattr(getattr(client, "settings", None), "max_queue_size", None)
        ),
    }
    for attr, gauge in gauges.items():
        number = readings[attr]
        if number is not None:
            gauge.add_metric(labels, number)

    for attr, metric, help_text in _AGGREGATION_COUNTERS:
        number = optional(attr)
        if number is not None:
            extra.counter(metric, help_text).add_metric(labels, number)
    open_now = optional("aggregates_open")
    if open_now is not None:
        extra.gauge(
            "aggregation_open", "Pre-aggregates open right now (usage not yet sent)."
        ).add_metric(labels, open_now)

    # durability spool/strict: the client lists these in as_dict() then
    for attr, metric, help_text in _SPOOL_COUNTERS:
        number = optional(attr)
        if number is not None:
            extra.counter(metric, help_text).add_metric(labels, number)
    backlog = optional("spool_backlog")
    if backlog is not None:
        extra.gauge(
            "spool_backlog", "Usage events waiting in the disk spool right now."
        ).add_metric(labels, backlog)

    latency = getattr(stats, "latency", None)
    histogram = _histogram_buckets(latency) if latency is not None else None
    if histogram is not None:
        extra.histogram().add_metric(labels, histogram[0], histogram[1])

    # any other number the client reports (a newer client than this module): a gauge
    for key, raw in values.items():
        number = _number(raw)
        if key in _KNOWN or number is None or not key.isidentifier():
            continue
        extra.gauge(f"client_{key}", f"client.stats.{key}.").add_metric(labels, number)


_registered: weakref.WeakKeyDictionary[CollectorRegistry, FluxrateCollector] = (
    weakref.WeakKeyDictionary()
)
_registered_lock = threading.Lock()


def register(
    source: Source,
    *,
    name: str = "default",
    registry: CollectorRegistry = REGISTRY,
) -> FluxrateCollector:
    """Export ``source``'s delivery stats from ``registry`` (default: the global one that
    ``prometheus_client.make_asgi_app()`` / ``make_wsgi_app()`` / ``generate_latest()`` serve).

    ``source``: a ``FluxrateClient``, a ``Metering``, or a function of no argument returning
    one (read at every scrape: e.g. ``fluxrate_web.django.get_metering``). One collector serves
    each registry: calling ``register`` again (an app factory run per test, a second client)
    adds the source to it, replacing the one of the same ``name``. Returns the collector
    (``registry.unregister(collector)`` removes it)."""
    with _registered_lock:
        collector = _registered.get(registry)
        if collector is None:
            collector = FluxrateCollector()
            registry.register(collector)
            _registered[registry] = collector
        collector.add(source, name=name)
    return collector
