"""`audioprep notifier` (the service) and `audioprep webhooks add|ls|show|rm|deliveries|replay|
rotate-secret|enable` (a client of the HTTP API, so keys and tenants apply as for jobs)."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from audioprep.services.cli.common import CliError
from audioprep.services.cli.submit import Api
from audioprep.shared.settings import Settings

EVENTS = ("job.completed", "job.failed", "job.cancelled")
KINDS = ("ingest", "preview", "save")


# ---- the service -------------------------------------------------------------------------------


def _notifier(args: argparse.Namespace) -> int:
    import uvloop

    from audioprep.services.cli.run_services import _settings
    from audioprep.services.notifier.main import main

    uvloop.run(main(_settings(args)))
    return 0


# ---- the client --------------------------------------------------------------------------------


def _api(args: argparse.Namespace) -> Api:
    settings = Settings.from_env()
    base = args.api or os.environ.get("AUDIOPREP_API_URL") or settings.base_url
    return Api(base, args.api_key or os.environ.get("AUDIOPREP_API_KEY"), args.http_timeout)


def _csv(value: str | None, allowed: tuple[str, ...], what: str) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise CliError(f"--{what} takes a comma-separated list of {', '.join(allowed)}")
    return items


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2))


def _endpoint_line(e: dict[str, Any]) -> str:
    kinds = ",".join(e.get("kinds") or ["*"])
    state = "disabled" if e.get("disabled") else ("failing" if e.get("failingSince") else "ok")
    return f"{e['id']}  {state:<8}  {','.join(e['events']):<40}  {kinds:<18}  {e['url']}"


def _add(args: argparse.Namespace, api: Api) -> int:
    body: dict[str, Any] = {"url": args.url}
    events = _csv(args.events, EVENTS, "events")
    if events:
        body["events"] = events
    kinds = _csv(args.kinds, KINDS, "kinds")
    if kinds:
        body["kinds"] = kinds
    if args.description:
        body["description"] = args.description
    created = api.request("POST", "/api/webhooks", json=body).json()
    if args.json:
        _print_json(created)
        return 0
    print(f"id       {created['id']}")
    print(f"url      {created['url']}")
    print(f"events   {', '.join(created['events'])}")
    print(f"kinds    {', '.join(created.get('kinds') or ['every kind'])}")
    print(f"secret   {created['secret']}")
    print("(the secret is shown only now: give it to the receiver to verify signatures)")
    return 0


def _ls(args: argparse.Namespace, api: Api) -> int:
    endpoints = api.request("GET", "/api/webhooks").json()["webhooks"]
    if args.json:
        _print_json(endpoints)
        return 0
    if not endpoints:
        print("no webhook endpoints (add one with `audioprep webhooks add URL`)")
        return 0
    print(f"{'ID':<29}  {'STATE':<8}  {'EVENTS':<40}  {'KINDS':<18}  URL")
    for endpoint in endpoints:
        print(_endpoint_line(endpoint))
        if endpoint.get("disabledReason"):
            print(f"{'':<31}disabled: {endpoint['disabledReason']}")
    return 0


def _show(args: argparse.Namespace, api: Api) -> int:
    endpoint = api.request("GET", f"/api/webhooks/{args.webhook_id}").json()
    if args.json:
        _print_json(endpoint)
        return 0
    for key, value in endpoint.items():
        if value is not None and key != "secret":
            print(f"{key:<15} {', '.join(value) if isinstance(value, list) else value}")
    return 0


def _rm(args: argparse.Namespace, api: Api) -> int:
    api.request("DELETE", f"/api/webhooks/{args.webhook_id}")
    print(f"deleted {args.webhook_id}")
    return 0


def _rotate(args: argparse.Namespace, api: Api) -> int:
    rotated = api.request("POST", f"/api/webhooks/{args.webhook_id}/rotate-secret").json()
    if args.json:
        _print_json(rotated)
        return 0
    print(f"secret   {rotated['secret']}")
    print(f"(the previous secret keeps signing until {rotated['previousSecretExpiresAt']})")
    return 0


def _enable(args: argparse.Namespace, api: Api) -> int:
    api.request("POST", f"/api/webhooks/{args.webhook_id}/enable")
    print(f"enabled {args.webhook_id}")
    return 0


def _deliveries(args: argparse.Namespace, api: Api) -> int:
    path = f"/api/webhooks/{args.webhook_id}/deliveries"
    if args.delivery_id:
        delivery = api.request("GET", f"{path}/{args.delivery_id}").json()
        if args.json:
            _print_json(delivery)
            return 0
        print(_delivery_line(delivery))
        for attempt in delivery.get("history", []):
            status = attempt.get("statusCode") or attempt.get("error") or ""
            took = f"{attempt['durationMs']} ms" if attempt.get("durationMs") is not None else ""
            line = f"  #{attempt['attempt']:<3} {attempt['at']}  {attempt['outcome']:<9}"
            print(f"{line} {status} {took}".rstrip())
        return 0
    deliveries = api.request("GET", path, params={"limit": args.limit}).json()["deliveries"]
    if args.json:
        _print_json(deliveries)
        return 0
    if not deliveries:
        print("no deliveries yet")
        return 0
    print(
        f"{'DELIVERY (webhook-id)':<30}  {'EVENT':<13}  {'JOB':<26}  {'STATUS':<9}  ATTEMPTS  "
        "LAST  NEXT ATTEMPT"
    )
    for delivery in deliveries:
        print(_delivery_line(delivery))
    return 0


def _delivery_line(d: dict[str, Any]) -> str:
    last = d.get("lastStatusCode") or d.get("lastError") or "-"
    replay = f"  (replay of {d['replayOf']})" if d.get("replayOf") else ""
    return (
        f"{d['id']:<30}  {d['event']:<13}  {d['jobId']:<26}  {d['status']:<9}  "
        f"{d['attempts']:<8}  {last!s:<4}  {d.get('nextAttemptAt') or '-'}{replay}"
    )


def _replay(args: argparse.Namespace, api: Api) -> int:
    path = f"/api/webhooks/{args.webhook_id}/deliveries/{args.delivery_id}/replay"
    replay = api.request("POST", path).json()
    if args.json:
        _print_json(replay)
        return 0
    print(replay["id"])
    return 0


def _client(command: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        api = _api(args)
        try:
            return int(command(args, api))
        finally:
            api.close()

    return run


def register(commands: Any) -> None:
    p = commands.add_parser(
        "notifier",
        help="run the webhook notifier (terminal job events → signed HTTP deliveries)",
        description="Consume terminal job events from stream JOBS, deliver them to the tenants' "
        "webhook endpoints (Standard Webhooks signatures, retries with backoff) and record every "
        "attempt in stream WEBHOOKS. Stateless: run as many as you like, on any host.",
    )
    p.add_argument("--nats-url", help="NATS server URL (default: AUDIOPREP_NATS_URL)")
    p.set_defaults(func=_notifier)

    w = commands.add_parser(
        "webhooks",
        help="manage webhook endpoints and their deliveries (through the HTTP API)",
        description="Webhook endpoints of the tenant of the API key (docs/webhooks.md).",
    )
    sub = w.add_subparsers(dest="webhooks_command", required=True, metavar="COMMAND")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--api",
            metavar="URL",
            help="API base URL (default AUDIOPREP_API_URL or http://AUDIOPREP_API_HOST:PORT)",
        )
        q.add_argument("--api-key", metavar="KEY", help="API key (default AUDIOPREP_API_KEY)")
        q.add_argument("--json", action="store_true", help="print the API's JSON")
        q.add_argument("--http-timeout", type=float, default=30.0, help=argparse.SUPPRESS)

    q = sub.add_parser("add", help="register an endpoint; prints its secret (once)")
    q.add_argument("url", help="the receiver's URL (https; http only in dev mode)")
    q.add_argument("--events", help=f"comma-separated, default all: {','.join(EVENTS)}")
    q.add_argument("--kinds", help=f"comma-separated job kinds, default all: {','.join(KINDS)}")
    q.add_argument("--description", help="a note for people")
    common(q)
    q.set_defaults(func=_client(_add))

    q = sub.add_parser("ls", help="list the endpoints")
    common(q)
    q.set_defaults(func=_client(_ls))

    for name, func, text in (
        ("show", _show, "show one endpoint"),
        ("rm", _rm, "delete an endpoint (its pending deliveries are dropped)"),
        ("rotate-secret", _rotate, "new secret; the old one keeps signing for a grace period"),
        ("enable", _enable, "re-enable an endpoint that was disabled (410 Gone, failing)"),
    ):
        q = sub.add_parser(name, help=text)
        q.add_argument("webhook_id", metavar="WEBHOOK_ID")
        common(q)
        q.set_defaults(func=_client(func))

    q = sub.add_parser("deliveries", help="an endpoint's deliveries, newest first (or one)")
    q.add_argument("webhook_id", metavar="WEBHOOK_ID")
    q.add_argument("delivery_id", metavar="DELIVERY_ID", nargs="?", help="show its attempts")
    q.add_argument("--limit", type=int, default=50, help="how many (default 50, at most 500)")
    common(q)
    q.set_defaults(func=_client(_deliveries))

    q = sub.add_parser("replay", help="send a delivery again (a new delivery, a new webhook-id)")
    q.add_argument("webhook_id", metavar="WEBHOOK_ID")
    q.add_argument("delivery_id", metavar="DELIVERY_ID")
    common(q)
    q.set_defaults(func=_client(_replay))
