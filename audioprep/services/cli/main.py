"""`audioprep` command line: one entry point, one module per group of subcommands."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import httpx

from audioprep.services.cli import dlq, events, jobs, projection, run_services, submit, up
from audioprep.services.cli import nats_config as nats_config_cli
from audioprep.services.cli import presets as presets_cli
from audioprep.services.cli import storage as storage_cli
from audioprep.services.cli import usage as usage_cli
from audioprep.services.cli import webhooks as webhooks_cli
from audioprep.services.cli.common import CliError
from audioprep.shared.nats_conn import NatsUnavailable


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audioprep",
        description="Event-sourced audio jobs on NATS JetStream: run the system and inspect it.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up.register(commands)
    run_services.register(commands)
    submit.register(commands)
    jobs.register(commands)
    events.register(commands)
    storage_cli.register(commands)
    projection.register(commands)
    dlq.register(commands)
    webhooks_cli.register(commands)
    presets_cli.register(commands)
    usage_cli.register(commands)
    nats_config_cli.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except NatsUnavailable as exc:
        print(f"audioprep: {exc}", file=sys.stderr)
        return 2
    except CliError as exc:
        print(f"audioprep: {exc}", file=sys.stderr)
        return exc.exit_code
    except httpx.TransportError as exc:  # a command that called HTTP without its own handling
        print(f"audioprep: cannot reach the API ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `audioprep events replay ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def run() -> None:
    """Console-script entry: exit without interpreter finalisation.

    obstore's native (tokio) threads can abort the process while Python finalises (seen as a
    silent SIGABRT on about 1 exit in 3 after storage calls), turning a clean exit code into
    134. Everything we own is closed by then, so flush and leave with the real code.
    """
    code = main()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
