"""`audioprep presets ls|show|add|rm`: the tenant's saved presets, through the HTTP API
(docs/publishing.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from audioprep.services.cli.common import CliError
from audioprep.services.cli.submit import Api
from audioprep.services.cli.webhooks import _client


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, ensure_ascii=False))


def _line(p: dict[str, Any]) -> str:
    recipe = ",".join(sorted((p.get("recipe") or {}).keys())) or "-"
    formats = "+".join(o["format"] for o in p.get("outputs") or []) or p.get("format") or "-"
    return f"{p['name']:<24}  v{p['version']:<4}  {formats:<5}  {recipe}"


def _ls(args: argparse.Namespace, api: Api) -> int:
    presets = api.request("GET", "/api/presets").json()["presets"]
    if args.json:
        _print_json(presets)
    elif not presets:
        print("no presets")
    else:
        for preset in presets:
            print(_line(preset))
    return 0


def _show(args: argparse.Namespace, api: Api) -> int:
    _print_json(api.request("GET", f"/api/presets/{quote(args.name, safe='')}").json())
    return 0


def _add(args: argparse.Namespace, api: Api) -> int:
    """Create or replace a preset from a JSON file (`{"recipe"?, "metadata"?, ...}`)."""
    try:
        body = json.loads(Path(args.file).read_text())
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {args.file}: {exc}") from None
    if not isinstance(body, dict):
        raise CliError(f"{args.file} must hold a JSON object")
    body.pop("name", None)
    resp = api.request("PUT", f"/api/presets/{quote(args.name, safe='')}", json=body)
    preset = resp.json()
    if args.json:
        _print_json(preset)
    else:
        print(("created " if resp.status_code == 201 else "updated ") + _line(preset))
    return 0


def _rm(args: argparse.Namespace, api: Api) -> int:
    api.request("DELETE", f"/api/presets/{quote(args.name, safe='')}")
    print(f"deleted {args.name}")
    return 0


def register(commands: Any) -> None:
    p = commands.add_parser(
        "presets",
        help="manage saved presets (through the HTTP API)",
        description="Saved presets of the tenant of the API key (docs/publishing.md).",
    )
    sub = p.add_subparsers(dest="presets_command", required=True, metavar="COMMAND")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--api", metavar="URL", help="API base URL (default AUDIOPREP_API_URL)")
        q.add_argument("--api-key", metavar="KEY", help="API key (default AUDIOPREP_API_KEY)")
        q.add_argument("--json", action="store_true", help="print the API's JSON")
        q.add_argument("--http-timeout", type=float, default=30.0, help=argparse.SUPPRESS)

    q = sub.add_parser("ls", help="list the presets")
    common(q)
    q.set_defaults(func=_client(_ls))
    q = sub.add_parser("show", help="show one preset (JSON)")
    q.add_argument("name")
    common(q)
    q.set_defaults(func=_client(_show))
    q = sub.add_parser("add", help="create or replace a preset from a JSON file")
    q.add_argument("name")
    q.add_argument(
        "file", help='JSON: {"recipe"?, "metadata"?, "format"? | "outputs"?, "options"?}'
    )
    common(q)
    q.set_defaults(func=_client(_add))
    q = sub.add_parser("rm", help="delete a preset")
    q.add_argument("name")
    common(q)
    q.set_defaults(func=_client(_rm))
