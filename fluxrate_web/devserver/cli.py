"""``fluxrate-web devserver``: run the Fluxrate-compatible local server."""

from __future__ import annotations

import argparse
import os
import sys

from fluxrate_web.devserver import jwt


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8787, help="TCP port, 0 for a free one (default 8787)"
    )
    parser.add_argument(
        "--db", metavar="PATH", help="SQLite file (default: in memory, gone at exit)"
    )
    parser.add_argument(
        "--meter",
        action="append",
        default=[],
        metavar="NAME:AGG[:TOKEN]",
        help="seed a meter (AGG: SUM, MAX, UNIQUE_COUNT, LAST); repeatable. Without any meter "
        "the server seeds api_calls:SUM, peak:MAX, seats:UNIQUE_COUNT, level:LAST",
    )
    parser.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY[:SCOPES]",
        help="seed an API key, scopes comma-separated (default: usage.write,usage.read); "
        "repeatable. Without any key the server uses a fixed local development key",
    )
    parser.add_argument(
        "--customer",
        action="append",
        default=[],
        metavar="EXTERNAL_ID",
        help="seed a customer (needed with --strict-customers); repeatable",
    )
    parser.add_argument("--seed", metavar="FILE", help="seed file (YAML or JSON)")
    parser.add_argument(
        "--strict-customers",
        action="store_true",
        help="answer 404 for an unknown customer_external_id instead of creating it",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KEY=VALUE[,...]",
        help="fault injection at start: error_rate, status, rate_limit_rate, retry_after, "
        "latency_ms, drop_rate, stored_drop_rate, outage_seconds; repeatable",
    )
    parser.add_argument(
        "--fault-seed", type=int, metavar="N", help="seed the fault RNG (reproducible runs)"
    )
    parser.add_argument(
        "--jwt-secret",
        default=os.environ.get("FLUXRATE_DEVSERVER_SECRET", jwt.DEFAULT_SECRET),
        help="HS256 secret for access_token cookies (env FLUXRATE_DEVSERVER_SECRET)",
    )
    parser.add_argument(
        "--validation-status",
        type=int,
        choices=(400, 422),
        help="answer every validation error with this status (default: 422 for a malformed "
        "payload, 400 for a payload the meter refuses)",
    )
    parser.add_argument(
        "--keep-alive", type=float, default=60.0, metavar="SECONDS", help="idle keep-alive"
    )
    parser.add_argument(
        "--http",
        default="auto",
        choices=("auto", "httptools", "h11"),
        help="uvicorn's HTTP/1.1 parser (auto: httptools when installed)",
    )
    parser.add_argument(
        "--loop",
        default="auto",
        choices=("auto", "uvloop", "asyncio"),
        help="event loop (auto: uvloop when installed)",
    )
    parser.add_argument(
        "--no-coalesce",
        action="store_true",
        help="let uvicorn write each response head and body separately (for benchmarks)",
    )
    parser.add_argument(
        "--log-level", default="warning", choices=("debug", "info", "warning", "error")
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the startup information as one JSON line (for programs) instead of text",
    )


def run(args: argparse.Namespace) -> int:
    from fluxrate_web.devserver import seed as seeds
    from fluxrate_web.devserver.faults import FaultSettings, parse_fault_args
    from fluxrate_web.devserver.server import ServerOptions, serve

    try:
        seed = seeds.load_file(args.seed) if args.seed else seeds.Seed()
        seed.merge(seeds.from_flags(args.meter, args.api_key, args.customer))
        fault_values = parse_fault_args(args.fault)
        fault_seed = fault_values.pop("seed", args.fault_seed)
        faults = FaultSettings.from_mapping(fault_values)
    except (OSError, ValueError) as exc:
        print(f"fluxrate-web devserver: {exc}", file=sys.stderr)
        return 2
    options = ServerOptions(
        host=args.host,
        port=args.port,
        db=args.db,
        seed=seed,
        strict_customers=args.strict_customers,
        faults=faults,
        fault_seed=fault_seed,
        jwt_secret=args.jwt_secret,
        validation_status=args.validation_status,
        keep_alive=args.keep_alive,
        json_banner=args.json,
        log_level=args.log_level,
        coalesce=not args.no_coalesce,
        http=args.http,
        loop=args.loop,
    )
    try:
        return serve(options)
    except (OSError, ValueError) as exc:
        print(f"fluxrate-web devserver: {exc}", file=sys.stderr)
        return 1
