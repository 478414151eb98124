"""`audioprep` command line: one entry point, one module per group of subcommands."""

from __future__ import annotations

import argparse
import sys

from services.cli import run_services, up
from shared.nats_conn import NatsUnavailable


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audioprep",
        description="Event-sourced audio jobs on NATS JetStream: run the system and inspect it.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up.register(commands)
    run_services.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except NatsUnavailable as exc:
        print(f"audioprep: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
