"""``fluxrate-web spool status|drain|export [DIR]``: inspect and empty a spool directory.

* ``status``: every spool file in DIR, whether a running process owns it (``live``) or its
  process is gone (``orphan``: the next process using this ``spool_path`` adopts it), how many
  events it holds and since when.
* ``drain``: deliver the events of the orphaned files now (adopts them, sends them with their
  original idempotency keys and timestamps, waits up to ``--timeout``). Live files are left to
  their processes. Events still not delivered stay in a spool file of their own.
* ``export``: write the events of the orphaned files as failure-log lines (JSON lines, mode
  0600) for ``fluxrate-web replay``, then delete those files (``--keep`` keeps them).

DIR defaults to the ``spool_path`` of the configuration (``--config`` or ``$FLUXRATE_CONFIG``).
Exit status: 0 done (``drain``: nothing left), 1 some events are left, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, TextIO

from fluxrate_web.core.errors import FluxrateError
from fluxrate_web.core.spool import claim, count_rows, list_spool_files, read_rows

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="spool_command", metavar="ACTION")
    sub.required = True
    for name, help_text in (
        ("status", "list the spool files, their owners and how many events they hold"),
        ("drain", "deliver the events of the spool files whose process is gone"),
        ("export", "write the events of orphaned spool files as failure-log lines"),
    ):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "directory",
            metavar="DIR",
            nargs="?",
            default=None,
            help="the spool directory (default: spool_path of the configuration)",
        )
        p.add_argument("--config", default=None, help="fluxrate.yaml to read spool_path from")
        if name == "drain":
            p.add_argument(
                "--api-key",
                default=None,
                help="API key (default: the configuration's, or $FLUXRATE_API_KEY)",
            )
            p.add_argument("--base-url", default=None, help="API base URL")
            p.add_argument(
                "--allow-insecure", action="store_true", help="allow http:// to a remote host"
            )
            p.add_argument(
                "--timeout",
                type=float,
                default=300.0,
                help="seconds to wait for delivery (default 300)",
            )
        if name == "export":
            p.add_argument(
                "--output",
                default=None,
                help="the failure log to write (default: fluxrate-spool-export-<time>.jsonl)",
            )
            p.add_argument(
                "--keep", action="store_true", help="keep the spool files after exporting"
            )


def _config_values(args: argparse.Namespace) -> dict[str, Any]:
    if args.config is None and not os.environ.get("FLUXRATE_CONFIG"):
        return {}
    from fluxrate_web.core.config import load_config

    config = load_config(args.config)
    return {
        "spool_path": config.spool_path,
        "api_key": config.api_key,
        "base_url": config.base_url,
        "allow_insecure": config.allow_insecure,
    }


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


def run(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        values = _config_values(args)
    except FluxrateError as exc:
        print(f"spool: {exc}", file=sys.stderr)
        return 2
    directory = args.directory or values.get("spool_path")
    if not directory:
        print("spool: no directory (give DIR, or spool_path in the configuration)", file=sys.stderr)
        return 2
    directory = os.path.abspath(directory)
    if not os.path.isdir(directory):
        print(f"spool: no such directory: {directory}", file=sys.stderr)
        return 2
    command = args.spool_command
    if command == "status":
        return _status(directory, out)
    if command == "drain":
        return _drain(directory, args, values, out)
    return _export(directory, args, out)


def _status(directory: str, out: TextIO) -> int:
    files = list_spool_files(directory)
    print(f"spool directory {directory}", file=out)
    if not files:
        print("no spool files", file=out)
        return 0
    print(f"{'FILE':<34} {'PID':>8} {'OWNER':<7} {'EVENTS':>9}  {'SINCE':<24} SIZE", file=out)
    total = orphans = orphan_events = 0
    for f in files:
        try:
            rows, oldest = count_rows(f.db_path)
            count = str(rows)
        except Exception as exc:  # a corrupt or foreign file: say so, go on
            rows, oldest, count = 0, None, f"? ({type(exc).__name__})"
        total += rows
        if not f.live:
            orphans += 1
            orphan_events += rows
        owner = "live" if f.live else "orphan"
        name = os.path.basename(f.db_path)
        print(
            f"{name:<34} {f.pid:>8} {owner:<7} {count:>9}  {oldest or '-':<24} {_size(f.size)}",
            file=out,
        )
    print(f"total: {total} event(s) waiting", file=out)
    if orphans:
        print(
            f"{orphans} file(s) of ended processes hold {orphan_events} event(s): the next "
            "process using this spool_path adopts them, or run `fluxrate-web spool drain`",
            file=out,
        )
    return 0


def _drain(directory: str, args: argparse.Namespace, values: dict[str, Any], out: TextIO) -> int:
    from fluxrate_web.core.client import FluxrateClient

    orphans = [f for f in list_spool_files(directory) if not f.live]
    if not orphans:
        print("nothing to drain: no spool file of an ended process", file=out)
        return 0
    try:
        client = FluxrateClient(
            args.api_key or values.get("api_key"),
            args.base_url or values.get("base_url"),
            allow_insecure=bool(args.allow_insecure or values.get("allow_insecure")),
            durability="spool",
            spool_path=directory,
            max_retry_age=max(1.0, args.timeout),
            shutdown_timeout=5.0,
        )
    except FluxrateError as exc:
        print(f"spool: {exc}", file=sys.stderr)
        return 2
    if not client.api_key_configured:
        print("spool: no API key (--api-key or FLUXRATE_API_KEY)", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        client.start()
        client.flush(args.timeout)
    finally:
        client.close(5.0)
    stats = client.stats
    print(
        f"adopted {stats.adopted} event(s) from {len(orphans)} file(s); delivered "
        f"{stats.delivered}, already there (deduplicated) {stats.deduplicated}, "
        f"rejected for good {stats.failed} in {time.monotonic() - started:.1f} s",
        file=out,
    )
    left = sum(count_rows(f.db_path)[0] for f in list_spool_files(directory) if not f.live)
    if left:
        print(f"{left} event(s) still waiting in {directory}", file=out)
        return 1
    if stats.failed:
        print("events rejected for good are in the failure log (or the log output)", file=out)
    return 0


def _export(directory: str, args: argparse.Namespace, out: TextIO) -> int:
    from fluxrate_web.core.events import UsageEvent
    from fluxrate_web.core.failures import FORMAT_VERSION, make_record

    output = os.path.abspath(
        args.output or time.strftime("fluxrate-spool-export-%Y%m%dT%H%M%SZ.jsonl", time.gmtime())
    )
    files = rows_out = unreadable = live = 0
    fd = -1
    try:
        for f in list_spool_files(directory):
            if f.live:
                live += 1
                continue
            # the files are deleted only when every line of theirs is written and synced
            with claim(directory, f.stem, remove=not args.keep) as db_path:
                if db_path is None:
                    live += 1
                    continue
                if fd < 0:
                    fd = os.open(output, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                    os.fchmod(fd, 0o600)
                lines: list[str] = []
                for _id, reason, spooled_at, data, _key in read_rows(db_path):
                    try:
                        record = make_record(UsageEvent.from_dict(json.loads(data)), reason)
                        record["time"] = spooled_at
                    except Exception as exc:
                        unreadable += 1
                        record = {
                            "v": FORMAT_VERSION,
                            "time": spooled_at,
                            "reason": "internal_error",
                            "error": f"unreadable spool row: {exc}"[:300],
                            "row": data,
                        }
                    lines.append(json.dumps(record, ensure_ascii=False, separators=(",", ":")))
                    if len(lines) >= 1000:
                        _write_all(fd, lines)
                        rows_out += len(lines)
                        lines = []
                _write_all(fd, lines)
                rows_out += len(lines)
                os.fsync(fd)
            files += 1
    except OSError as exc:
        print(f"spool: export failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if fd >= 0:
            os.close(fd)
    if not files:
        print("nothing to export: no spool file of an ended process", file=out)
    else:
        print(
            f"exported {rows_out} event(s) from {files} file(s) to {output}"
            + (f" ({unreadable} unreadable row(s) kept verbatim)" if unreadable else "")
            + ("" if args.keep else "; those spool files are deleted"),
            file=out,
        )
    if live:
        print(f"{live} file(s) owned by running processes were left alone", file=out)
    if rows_out:
        print(f"send them with: fluxrate-web replay {output}", file=out)
    return 0


def _write_all(fd: int, lines: list[str]) -> None:
    if not lines:
        return
    view = memoryview(("\n".join(lines) + "\n").encode("utf-8"))
    while view:
        view = view[os.write(fd, view) :]


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - python -m entry
    parser = argparse.ArgumentParser(prog="fluxrate-web spool", description=__doc__)
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
