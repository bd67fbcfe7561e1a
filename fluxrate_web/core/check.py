"""``fluxrate-web check [fluxrate.yaml]``: validate a configuration and print what it bills.

Loads the file (or ``$FLUXRATE_CONFIG``, or ``./fluxrate.yaml``), compiles every rule (which
imports the callables it names), and prints the settings, the meters and the endpoint rules.
Exit status 0 when valid, 1 with the ``ConfigError`` message (``file:line: key: why``) when not.
The API key is never printed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from fluxrate_web.core.config import ENV_CONFIG, Config, load_config
from fluxrate_web.core.errors import ConfigError
from fluxrate_web.core.rules import RequestRules

__all__ = ["configure", "run"]

DEFAULT_FILE = "fluxrate.yaml"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path",
        nargs="?",
        default=None,
        help=f"the YAML file (default: ${ENV_CONFIG}, then ./{DEFAULT_FILE})",
    )
    parser.add_argument(
        "--no-import",
        action="store_true",
        help="only check the file's syntax and schema; do not import the callables it names",
    )


def _table(rows: Sequence[Sequence[str]], headers: Sequence[str], out: TextIO) -> None:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()
    print(line, file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


def report(config: Config, rules: RequestRules | None, out: TextIO) -> None:
    """Print the settings, meters and endpoint rules of a valid configuration."""
    print(f"{config.source}: OK", file=out)
    print(file=out)
    settings = config.describe()
    settings.pop("source", None)
    width = max(len(k) for k in settings)
    for key, value in settings.items():
        print(f"{key.ljust(width)}  {value}", file=out)
    print(file=out)
    meter_rows = [
        [
            spec.name,
            spec.token,
            spec.aggregation or "-",
            f"{spec.window:g}s" if spec.window is not None else "-",
        ]
        for spec in config.meters.values()
    ]
    print(f"Meters ({len(meter_rows)})", file=out)
    if meter_rows:
        _table(meter_rows, ["name", "token", "aggregation", "window"], out)
    else:
        print("(none: use meter tokens directly, or add 'meters:')", file=out)
    print(file=out)
    print(f"Endpoint rules ({len(config.endpoints)}, first match wins; skip rules first)", file=out)
    if rules is not None:
        rule_rows = [
            [
                row["where"].rsplit(":", 1)[-1] if ":" in row["where"] else "-",
                row["match"],
                row["methods"],
                row["meters"],
                row["customer"],
                row["bill_on"],
            ]
            for row in rules.describe()
        ]
    else:
        rule_rows = [
            [
                rule.where.rsplit(":", 1)[-1] if ":" in rule.where else "-",
                rule.describe_match(),
                ",".join(sorted(rule.methods)) if rule.methods else "*",
                "(skip)" if rule.skip else ", ".join(use.meter for use in rule.meters),
                "-",
                rule.bill_on or "-",
            ]
            for rule in config.endpoints
        ]
    if rule_rows:
        _table(rule_rows, ["line", "match", "methods", "meters", "customer", "bill_on"], out)
    else:
        print("(none)", file=out)
    notes = notes_for(config)
    if notes:
        print(file=out)
        print("Notes", file=out)
        for note in notes:
            print(f"- {note}", file=out)


def notes_for(config: Config) -> list[str]:
    """Things that are valid but probably not what was meant."""
    notes = []
    resolvers = [*config.customer]
    for rule in config.endpoints:
        resolvers.extend(rule.customer or ())
    unresolved = config.default_meter is not None or any(
        not rule.skip and rule.customer is None for rule in config.endpoints
    )
    if not config.customer and unresolved:
        notes.append(
            "no 'customer:' resolver: requests billed by rules without their own 'customer:' "
            "(and @meter views without customer=) are dropped and counted"
        )
    if any(isinstance(spec, str) and spec.startswith("header:") for spec in resolvers):
        notes.append(
            "a 'header:' customer resolver trusts what the client sends: use it only behind a "
            "proxy that authenticates the caller and sets (or strips) that header"
        )
    if not config.api_key and not os.environ.get("FLUXRATE_API_KEY") and config.enabled:
        notes.append("no api_key (and FLUXRATE_API_KEY is not set): deliveries will fail with 401")
    return notes


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    path = args.path or os.environ.get(ENV_CONFIG) or None
    if path is None:
        if not os.path.exists(DEFAULT_FILE):
            print(
                f"fluxrate-web check: no configuration file: pass a path, set {ENV_CONFIG}, "
                f"or create ./{DEFAULT_FILE}",
                file=err,
            )
            return 1
        path = DEFAULT_FILE
    try:
        config = load_config(path)
        rules = None if getattr(args, "no_import", False) else RequestRules(config)
    except ConfigError as exc:
        print(str(exc), file=err)
        return 1
    report(config, rules, out)
    return 0
