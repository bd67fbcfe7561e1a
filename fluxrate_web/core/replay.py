"""``fluxrate-web replay FILE``: resend the events of a failure log.

Each event goes out again with its original idempotency key and timestamp, so an event the API
already has is answered as a duplicate and never billed twice. Events that still fail are
written to a new failure log (``--output``, default ``FILE.replay-<UTC time>.jsonl``); lines that
cannot be read as events are copied there verbatim. Exit status: 0 when every event was
delivered (or already there), 1 when some still fail, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from typing import TextIO

from fluxrate_web.core.errors import FluxrateError
from fluxrate_web.core.failures import FailureRecord, read_failure_log

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file",
        metavar="FILE",
        help="a failure log (JSON lines), or a Redis dead-letter stream: "
        "'redis://host:6379/0#fluxrate:events:dead'",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="read and count the events, send nothing",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="API key (default: $FLUXRATE_API_KEY; prefer the variable: arguments show in ps)",
    )
    parser.add_argument(
        "--access-token",
        default=None,
        help="JWT for REST events (meter_id/customer_id) sent to POST /api/v1/usage",
    )
    parser.add_argument(
        "--base-url",
        default=None,
        help="API base URL (default: $FLUXRATE_BASE_URL or https://api.fluxrate.co)",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="where events that still fail go (default: FILE.replay-<time>.jsonl)",
    )
    parser.add_argument(
        "--allow-insecure",
        action="store_true",
        help="allow plain http:// to a non-loopback host",
    )
    parser.add_argument(
        "--max-attempts", type=int, default=5, help="attempts per event (default 5)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds to wait for every event to be settled (default 300)",
    )


def _default_output(path: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = path[:-6] if path.endswith(".jsonl") else path
    return f"{base}.replay-{stamp}.jsonl"


def run(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    path: str = args.file
    # a Redis dead-letter stream (fluxrate-web relay): replayed entries are removed from it
    redis_source = path.lower().startswith(("redis://", "rediss://", "unix://"))
    entry_ids: dict[str, list[str]] = {}
    if not redis_source and not os.path.isfile(path):
        print(f"replay: no such file: {path}", file=sys.stderr)
        return 2
    records: list[FailureRecord] = []
    bad_lines: list[tuple[int, str, str]] = []
    seen: set[str] = set()
    repeated = 0
    try:
        if redis_source:
            from fluxrate_web.core.redis_transport import mask_redis_url, read_dead_letters

            lines = list(read_dead_letters(path, entry_ids))
            path = mask_redis_url(path)
        for number, raw, record, problem in lines if redis_source else read_failure_log(path):
            if record is None:
                bad_lines.append((number, raw, problem or "unreadable"))
                continue
            key = record.event.idempotency_key
            if key in seen:  # the same event twice in the file: send it once
                repeated += 1
                continue
            seen.add(key)
            records.append(record)
    except (OSError, ValueError) as exc:
        print(f"replay: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # redis errors
        print(f"replay: cannot read {path}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    reasons = Counter(r.reason for r in records)
    print(
        f"read {len(records)} event(s) from {path}"
        + (f", {repeated} repeated line(s) skipped" if repeated else "")
        + (f", {len(bad_lines)} unreadable line(s)" if bad_lines else ""),
        file=out,
    )
    for number, _raw, problem in bad_lines[:10]:
        print(f"  line {number}: {problem}", file=out)
    if reasons:
        print("by reason: " + ", ".join(f"{k}={v}" for k, v in sorted(reasons.items())), file=out)
    if args.dry_run:
        meters = Counter(r.event.meter_token or r.event.meter_id or "?" for r in records)
        print("by meter: " + ", ".join(f"{k}={v}" for k, v in sorted(meters.items())), file=out)
        print("dry run: nothing sent", file=out)
        return 0

    output = args.output or _default_output("fluxrate-dead" if redis_source else path)
    if os.path.abspath(output) == os.path.abspath(path):
        print("replay: --output must differ from FILE", file=sys.stderr)
        return 2
    # imported here so that --dry-run and --help never start a network stack
    from fluxrate_web.core.client import FluxrateClient

    try:
        client = FluxrateClient(
            args.api_key,
            args.base_url,
            access_token=args.access_token,
            allow_insecure=args.allow_insecure,
            failed_events_path=output,
            max_attempts=max(1, args.max_attempts),
            max_retry_age=max(1.0, args.timeout),
            max_queue_size=max(100_000, len(records) + 1),
            shutdown_timeout=5.0,
        )
    except FluxrateError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    if not client.api_key_configured and not args.access_token:
        print("replay: no API key (--api-key or FLUXRATE_API_KEY)", file=sys.stderr)
        return 2
    started = time.monotonic()
    settled = False
    try:
        for record in records:
            client.enqueue(record.event)
        settled = client.flush(args.timeout)
    finally:
        client.close(None if settled else 0.0)
    if bad_lines:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        fd = os.open(output, flags, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            for _number, raw, _problem in bad_lines:
                fh.write(raw + "\n")
    stats = client.stats
    still_failing = stats.failed + len(bad_lines)
    print(
        f"delivered {stats.delivered}, already there (deduplicated) {stats.deduplicated}, "
        f"failed {stats.failed}, retried {stats.retried} "
        f"in {time.monotonic() - started:.1f} s",
        file=out,
    )
    if redis_source:
        from fluxrate_web.core.redis_transport import delete_dead_letters

        failing = set()
        if os.path.isfile(output):
            failing = {r.event.idempotency_key for _, _, r, _ in read_failure_log(output) if r}
        done = [i for key, ids in entry_ids.items() if key not in failing for i in ids]
        removed = delete_dead_letters(args.file, done)
        print(f"removed {removed} replayed entr(ies) from the stream", file=out)
    if still_failing:
        print(f"{still_failing} event(s) still failing: written to {output}", file=out)
        return 1
    print("all events delivered", file=out)
    return 0


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - python -m entry
    parser = argparse.ArgumentParser(prog="fluxrate-web replay", description=__doc__)
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
