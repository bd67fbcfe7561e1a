"""``fluxrate-web relay``: deliver the events of the Redis stream to Fluxrate (see
:mod:`fluxrate_web.relay` and ``docs/scale-out.md``).

Runs until SIGTERM or SIGINT, then finishes the deliveries in flight and exits 0. Exit status 2
on a configuration problem (no API key, unreadable configuration, no redis package), 1 after
an unexpected error (logged; the service manager restarts it).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from dataclasses import asdict

from fluxrate_web.core.errors import ConfigError

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=None,
        help="fluxrate.yaml: API key, base URL, delivery settings, redis_url, redis_stream, "
        "relay_rate_limit, relay_claim_idle (default: $FLUXRATE_CONFIG)",
    )
    parser.add_argument(
        "--consumer",
        default=None,
        help="this relay's consumer name in the group (default: <hostname>-<pid>); a relay "
        "restarted under the same name resumes its own pending entries at once",
    )
    parser.add_argument(
        "--group", default=None, help="the consumer group (default: fluxrate-relays)"
    )
    parser.add_argument(
        "--claim-idle",
        type=float,
        default=None,
        help="seconds after which another relay's unacknowledged entries are claimed "
        "(default: relay_claim_idle, 60)",
    )
    parser.add_argument(
        "--rate-limit",
        type=int,
        default=None,
        help="events per second sent to the API by all relays together "
        "(default: relay_rate_limit, none)",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=None,
        help="entries this relay holds at once (default: max(256, 8 x max_in_flight))",
    )
    parser.add_argument(
        "--aggregation-grace",
        type=float,
        default=10.0,
        help="seconds after a window's end before its fleet-wide aggregate is sealed and "
        "sent (default 10)",
    )


def run(args: argparse.Namespace) -> int:
    from fluxrate_web.core.config import load_config
    from fluxrate_web.relay import DEFAULT_GROUP, Relay

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    if not (config.api_key or os.environ.get("FLUXRATE_API_KEY", "").strip()):
        print("relay: no API key (api_key in the configuration or FLUXRATE_API_KEY)",
              file=sys.stderr)  # fmt: skip
        return 2
    log = logging.getLogger("fluxrate_web")
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        relay = Relay(
            config,
            consumer=args.consumer,
            group=args.group or DEFAULT_GROUP,
            claim_idle=args.claim_idle,
            rate_limit=args.rate_limit,
            window=args.window,
            aggregation_grace=args.aggregation_grace,
        )
    except ConfigError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, relay.stop)
        await relay.run()

    asyncio.run(main())
    print(f"relay {relay.consumer}: {asdict(relay.stats)}", file=sys.stderr)
    return 1 if relay.failed else 0
