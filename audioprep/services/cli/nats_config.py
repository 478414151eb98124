"""`audioprep nats-config`: the least-privilege nats-server config for a deployment's names."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from audioprep.services.cli.common import CliError
from audioprep.shared.names import Names
from audioprep.shared.nats_permissions import REGENERATE, render_authorization, render_config
from audioprep.shared.settings import Settings


def _run(args: argparse.Namespace) -> int:
    try:
        deployments = (
            [Names(p) for p in args.prefix] if args.prefix else [Settings.from_env().names]
        )
        text = (
            render_authorization(deployments)
            if args.authorization_only
            else render_config(deployments, include=args.include)
        )
    except ValueError as exc:
        raise CliError(str(exc), exit_code=2) from None
    sys.stdout.write(text)
    return 0


def register(commands: Any) -> None:
    p = commands.add_parser(
        "nats-config",
        help="print the production nats-server config (one least-privilege user per service)",
        description="Print a nats-server config: `--include` (the server settings, default "
        "nats.conf beside it) plus an authorization block with one user per service (admin, "
        "api, worker, projector, notifier), each allowed only the subjects it uses, built "
        "from the name table for the prefix (AUDIOPREP_NAME_PREFIX unless --prefix is given; "
        "repeat --prefix for several deployments on one server). Passwords are read from "
        "the server's environment (AUDIOPREP_NATS_<ROLE>_PASSWORD, with a prefix "
        f"AUDIOPREP_NATS_<PREFIX>_<ROLE>_PASSWORD). deploy/nats-prod.conf is `{REGENERATE}`.",
    )
    p.add_argument(
        "--prefix",
        action="append",
        metavar="P",
        help="name prefix of a deployment (repeatable; default: AUDIOPREP_NAME_PREFIX)",
    )
    p.add_argument(
        "--authorization-only",
        action="store_true",
        help="print only the `authorization { … }` block (to paste into your own config)",
    )
    p.add_argument(
        "--include",
        default="nats.conf",
        help="the server settings the config includes (default: nats.conf)",
    )
    p.set_defaults(func=_run)
