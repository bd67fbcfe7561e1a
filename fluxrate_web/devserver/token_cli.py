"""``fluxrate-web token``: mint a dashboard ``access_token`` for the devserver's
``POST /api/v1/usage`` (HS256, same secret as ``fluxrate-web devserver --jwt-secret``)."""

from __future__ import annotations

import argparse
import os

from fluxrate_web.devserver import jwt
from fluxrate_web.devserver.models import DEFAULT_ORG, org_id_for


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--org", default=DEFAULT_ORG, help=f"organization name (default {DEFAULT_ORG!r})"
    )
    parser.add_argument(
        "--ttl", type=float, default=jwt.DEFAULT_TTL, help="lifetime in seconds (default 900)"
    )
    parser.add_argument("--subject", default="developer@localhost", help="the sub claim")
    parser.add_argument(
        "--secret",
        default=os.environ.get("FLUXRATE_DEVSERVER_SECRET", jwt.DEFAULT_SECRET),
        help="HS256 secret (env FLUXRATE_DEVSERVER_SECRET; default: the devserver's default)",
    )
    parser.add_argument(
        "--cookie", action="store_true", help="print a Cookie header value, not the bare token"
    )


def run(args: argparse.Namespace) -> int:
    token = jwt.mint(args.secret, org_id=org_id_for(args.org), subject=args.subject, ttl=args.ttl)
    print(f"access_token={token}" if args.cookie else token)
    return 0
