"""The fluxrate-web command line.

Each subcommand lives beside the code it drives and is imported only when chosen, so
``fluxrate-web replay`` never imports the devserver's web stack and vice versa.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module, help). The module defines ``configure(parser)`` and ``run(args) -> int``.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "devserver": ("fluxrate_web.devserver.cli", "run the Fluxrate-compatible local server"),
    "token": ("fluxrate_web.devserver.token_cli", "mint a devserver JWT for POST /api/v1/usage"),
    "replay": ("fluxrate_web.core.replay", "resend the events of a failure log"),
    "check": ("fluxrate_web.core.check", "validate a fluxrate.yaml and print its meters and rules"),
    "spool": ("fluxrate_web.core.spool_cli", "inspect and empty a spool directory"),
    "relay": ("fluxrate_web.relay_cli", "deliver the events of a Redis stream to Fluxrate"),
}


def build_parser() -> tuple[
    argparse.ArgumentParser, argparse._SubParsersAction[argparse.ArgumentParser]
]:
    parser = argparse.ArgumentParser(prog="fluxrate-web", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in SUBCOMMANDS.items():
        subparsers.add_parser(name, help=help_text, description=help_text)
    return parser, subparsers


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser, subparsers = build_parser()
    command = args_list[0] if args_list else None
    if command not in SUBCOMMANDS:
        parser.parse_args(args_list)  # prints usage or --help, exits 2 on an unknown command
        parser.print_help()
        return 2
    module = importlib.import_module(SUBCOMMANDS[command][0])
    module.configure(subparsers.choices[command])
    args = parser.parse_args(args_list)
    result: int = module.run(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
