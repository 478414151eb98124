"""Webhook endpoints of a tenant, their deliveries, and replays (docs/webhooks.md).

Endpoints live in KV bucket `webhook_endpoints` (the signing secret encrypted at rest);
deliveries are the fold of the events the notifier records in stream WEBHOOKS. Another
tenant's endpoint is a 404, exactly like one that does not exist.

In the OpenAPI document (operation ids and tags in services/api/openapi.py); the schema fuzz
test (tests/security) lists the URLs the SSRF guard refuses among its documented exceptions.
"""

from __future__ import annotations

import functools
import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, Parameter
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_201_CREATED,
    HTTP_202_ACCEPTED,
)

from audioprep.domain.events import utcnow
from audioprep.domain.kinds import Kind
from audioprep.services.api.auth import tenant_for
from audioprep.services.api.bodies import json_body
from audioprep.services.api.context import ApiContext
from audioprep.services.api.openapi import JSON_BODY, problems
from audioprep.services.api.options import options_for
from audioprep.services.api.problems import ProblemError
from audioprep.shared import names
from audioprep.shared.settings import Settings
from audioprep.shared.webhook_crypto import SecretBox, new_secret, secret_box
from audioprep.shared.webhook_events import (
    WEBHOOK_TYPES,
    DeliveryCreated,
    DeliveryView,
    WebhookType,
    new_delivery_id,
    pending_delivery,
)
from audioprep.shared.webhook_store import (
    MAX_ENDPOINTS_PER_TENANT,
    DeliveryStore,
    Endpoint,
    EndpointStore,
    StoredSecret,
    TooManyEndpoints,
    is_delivery_id,
    new_endpoint_id,
)
from audioprep.shared.webhook_url import MAX_URL_CHARS, WebhookUrlError, check_registration

log = logging.getLogger("audioprep.api")

MAX_DELIVERIES_LISTED = 500


class WebhookCreate(
    msgspec.Struct, frozen=True, kw_only=True, rename="camel", forbid_unknown_fields=True
):
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_URL_CHARS)]
    events: Annotated[list[WebhookType], msgspec.Meta(min_length=1, max_length=3)] = msgspec.field(
        default_factory=lambda: list(WEBHOOK_TYPES)
    )
    kinds: Annotated[list[Kind], msgspec.Meta(min_length=1, max_length=3)] | None = None
    description: Annotated[str, msgspec.Meta(max_length=500)] | None = None


class WebhookOut(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """An endpoint as the API shows it (never its secret, except once when made or rotated)."""

    id: str
    url: str
    events: list[WebhookType]
    kinds: list[Kind] | None
    description: str | None
    created_at: datetime
    updated_at: datetime
    disabled: bool
    disabled_reason: str | None
    disabled_at: datetime | None
    failing_since: datetime | None
    last_success_at: datetime | None


class WebhookCreated(WebhookOut, frozen=True, kw_only=True):
    """The answer to POST: the only time the secret is shown."""

    secret: str


class WebhookList(msgspec.Struct, frozen=True, kw_only=True):
    webhooks: list[WebhookOut]


class SecretRotated(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    id: str
    secret: str
    previous_secret_expires_at: datetime


class DeliveryList(msgspec.Struct, frozen=True, kw_only=True):
    deliveries: list[DeliveryView]


def _out(endpoint: Endpoint) -> WebhookOut:
    return WebhookOut(**_fields(endpoint))


def _fields(endpoint: Endpoint) -> dict[str, Any]:
    return dict(
        id=endpoint.id,
        url=endpoint.url,
        events=endpoint.events,
        kinds=endpoint.kinds or None,
        description=endpoint.description,
        created_at=endpoint.created_at,
        updated_at=endpoint.updated_at,
        disabled=endpoint.disabled,
        disabled_reason=endpoint.disabled_reason,
        disabled_at=endpoint.disabled_at,
        failing_since=endpoint.failing_since,
        last_success_at=endpoint.last_success_at,
    )


@functools.cache
def _box(key: str, data_dir: Path, dev_mode: bool) -> SecretBox:
    return secret_box(Settings(webhook_secret_key=key, data_dir=data_dir, dev_mode=dev_mode))


def _secret_box(settings: Settings) -> SecretBox:
    try:
        return _box(settings.webhook_secret_key, settings.data_dir, settings.dev_mode)
    except ValueError as exc:
        raise ProblemError(503, "webhooks_unconfigured", str(exc)) from None


def _not_found(webhook_id: str) -> ProblemError:
    return ProblemError(404, "webhook_not_found", f"no webhook endpoint {webhook_id!r}")


async def _endpoint(api: ApiContext, tenant: str, webhook_id: str) -> Endpoint:
    found = await EndpointStore(api.nc, api.js, api.settings.names).get(tenant, webhook_id)
    if found is None:
        raise _not_found(webhook_id)
    return found[0]


def _unique(values: list[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


@post(
    "/api/webhooks",
    summary="Register a webhook endpoint",
    description=(
        "The answer carries the endpoint's signing `secret` (`whsec_…`), shown only this once. "
        "The URL passes the SSRF guard: private, loopback and link-local targets (also by DNS) "
        "are a 422 `forbidden_url`, a bad URL `invalid_url`, a name that does not resolve "
        "`unresolvable_host` (`field` = `url`)."
    ),
    status_code=HTTP_201_CREATED,
    responses=problems(400, 401, 409, 413, 415, 422),
    opt={JSON_BODY: WebhookCreate},
)
async def create_webhook(
    request: Request[Any, Any, Any], api: NamedDependency[ApiContext]
) -> Response[WebhookOut]:
    tenant = tenant_for(request, api.settings)
    body = await json_body(request, WebhookCreate)
    try:
        await check_registration(body.url, api.settings)
    except WebhookUrlError as exc:
        raise ProblemError(422, exc.code, exc.message, field="url") from None
    box = _secret_box(api.settings)
    now = utcnow()
    endpoint_id = new_endpoint_id()
    secret = new_secret()
    jobs_info = await api.js.stream_info(api.settings.names.stream)
    endpoint = Endpoint(
        id=endpoint_id,
        tenant=tenant,
        url=body.url.strip(),
        events=_unique(body.events),
        kinds=_unique(body.kinds or []),
        description=body.description,
        created_at=now,
        updated_at=now,
        jobs_from_seq=int(jobs_info.state.last_seq or 0),
        secrets=[
            StoredSecret(
                sealed=box.encrypt(secret, names.webhook_endpoint_key(tenant, endpoint_id)),
                created_at=now,
            )
        ],
    )
    try:
        await EndpointStore(api.nc, api.js, api.settings.names).create(endpoint)
    except TooManyEndpoints:
        raise ProblemError(
            409,
            "too_many_webhooks",
            f"a tenant can have at most {MAX_ENDPOINTS_PER_TENANT} webhook endpoints",
        ) from None
    log.info("webhook endpoint created", extra={"endpoint_id": endpoint_id, "tenant": tenant})
    return Response(
        WebhookCreated(**_fields(endpoint), secret=secret),
        status_code=HTTP_201_CREATED,
        headers={"Location": f"/api/webhooks/{endpoint_id}"},
    )


@get("/api/webhooks", summary="List the tenant's webhook endpoints", responses=problems(401))
async def list_webhooks(
    request: Request[Any, Any, Any], api: NamedDependency[ApiContext]
) -> WebhookList:
    tenant = tenant_for(request, api.settings)
    endpoints = await EndpointStore(api.nc, api.js, api.settings.names).for_tenant(tenant)
    return WebhookList(webhooks=[_out(e) for e in endpoints])


@get("/api/webhooks/{webhook_id:str}", summary="One webhook endpoint", responses=problems(401, 404))
async def get_webhook(
    request: Request[Any, Any, Any], api: NamedDependency[ApiContext], webhook_id: FromPath[str]
) -> WebhookOut:
    tenant = tenant_for(request, api.settings)
    return _out(await _endpoint(api, tenant, webhook_id))


@delete(
    "/api/webhooks/{webhook_id:str}",
    summary="Delete a webhook endpoint",
    responses=problems(401, 404),
)
async def delete_webhook(
    request: Request[Any, Any, Any], api: NamedDependency[ApiContext], webhook_id: FromPath[str]
) -> None:
    tenant = tenant_for(request, api.settings)
    if not await EndpointStore(api.nc, api.js, api.settings.names).delete(tenant, webhook_id):
        raise _not_found(webhook_id)
    log.info("webhook endpoint deleted", extra={"endpoint_id": webhook_id, "tenant": tenant})


@post(
    "/api/webhooks/{webhook_id:str}/rotate-secret",
    summary="Rotate an endpoint's signing secret",
    status_code=HTTP_200_OK,
    responses=problems(401, 404),
)
async def rotate_webhook_secret(
    request: Request[Any, Any, Any], api: NamedDependency[ApiContext], webhook_id: FromPath[str]
) -> SecretRotated:
    """A new secret, shown once; the previous one keeps signing (a second signature) for
    AUDIOPREP_WEBHOOK_SECRET_GRACE_S so receivers can switch without losing deliveries."""
    tenant = tenant_for(request, api.settings)
    box = _secret_box(api.settings)
    secret = new_secret()
    now = utcnow()
    expires = now + timedelta(seconds=api.settings.webhook_secret_grace_s)

    def rotate(current: Endpoint) -> Endpoint:
        sealed = box.encrypt(secret, current.key)
        kept = [
            msgspec.structs.replace(s, expires_at=min(s.expires_at or expires, expires))
            for s in current.secrets
            if s.expires_at is None or s.expires_at > now
        ]
        return msgspec.structs.replace(
            current,
            secrets=[StoredSecret(sealed=sealed, created_at=now), *kept][:3],
            updated_at=now,
        )

    if (
        await EndpointStore(api.nc, api.js, api.settings.names).update(tenant, webhook_id, rotate)
        is None
    ):
        raise _not_found(webhook_id)
    log.info("webhook secret rotated", extra={"endpoint_id": webhook_id, "tenant": tenant})
    return SecretRotated(id=webhook_id, secret=secret, previous_secret_expires_at=expires)


@post(
    "/api/webhooks/{webhook_id:str}/enable",
    summary="Re-enable a disabled endpoint",
    status_code=HTTP_200_OK,
    responses=problems(401, 404),
)
async def enable_webhook(
    request: Request[Any, Any, Any], api: NamedDependency[ApiContext], webhook_id: FromPath[str]
) -> WebhookOut:
    """Re-enable an endpoint the notifier disabled (410 Gone, or failing for days)."""
    tenant = tenant_for(request, api.settings)
    now = utcnow()

    def enable(current: Endpoint) -> Endpoint | None:
        if not current.disabled:
            return None
        return msgspec.structs.replace(
            current,
            disabled=False,
            disabled_reason=None,
            disabled_at=None,
            failing_since=None,
            updated_at=now,
        )

    updated = await EndpointStore(api.nc, api.js, api.settings.names).update(
        tenant, webhook_id, enable
    )
    if updated is None:
        raise _not_found(webhook_id)
    return _out(updated)


@get(
    "/api/webhooks/{webhook_id:str}/deliveries",
    summary="An endpoint's deliveries, newest first",
    responses=problems(401, 404, 422),
)
async def list_deliveries(
    request: Request[Any, Any, Any],
    api: NamedDependency[ApiContext],
    webhook_id: FromPath[str],
    limit: Annotated[int, Parameter(ge=1, le=MAX_DELIVERIES_LISTED)] = 50,
) -> DeliveryList:
    """Newest first: event, job id, status, attempts, last status code, next attempt."""
    tenant = tenant_for(request, api.settings)
    await _endpoint(api, tenant, webhook_id)
    views = await DeliveryStore(api.nc, api.js, api.settings.names).deliveries(
        webhook_id, limit=limit
    )
    return DeliveryList(deliveries=views)


async def _delivery(
    api: ApiContext, tenant: str, webhook_id: str, delivery_id: str
) -> tuple[Endpoint, DeliveryView]:
    endpoint = await _endpoint(api, tenant, webhook_id)
    view = None
    if is_delivery_id(delivery_id):
        view = await DeliveryStore(api.nc, api.js, api.settings.names).delivery(
            webhook_id, delivery_id
        )
    if view is None:
        raise ProblemError(404, "delivery_not_found", f"no delivery {delivery_id!r}")
    return endpoint, view


@get(
    "/api/webhooks/{webhook_id:str}/deliveries/{delivery_id:str}",
    summary="One delivery with every attempt",
    responses=problems(401, 404),
)
async def get_delivery(
    request: Request[Any, Any, Any],
    api: NamedDependency[ApiContext],
    webhook_id: FromPath[str],
    delivery_id: FromPath[str],
) -> DeliveryView:
    """One delivery with every attempt."""
    tenant = tenant_for(request, api.settings)
    return (await _delivery(api, tenant, webhook_id, delivery_id))[1]


@post(
    "/api/webhooks/{webhook_id:str}/deliveries/{delivery_id:str}/replay",
    summary="Send a delivery again, as a new delivery",
    status_code=HTTP_202_ACCEPTED,
    responses=problems(401, 404, 409),
)
async def replay_delivery(
    request: Request[Any, Any, Any],
    api: NamedDependency[ApiContext],
    webhook_id: FromPath[str],
    delivery_id: FromPath[str],
) -> Response[DeliveryView]:
    """Send a delivery's job event again, as a new delivery (a new `webhook-id`, `replayOf`
    naming the original) with the job's current view; the original is left as it is."""
    tenant = tenant_for(request, api.settings)
    endpoint, original = await _delivery(api, tenant, webhook_id, delivery_id)
    if endpoint.disabled:
        raise ProblemError(
            409,
            "webhook_disabled",
            f"the endpoint is disabled ({endpoint.disabled_reason}); enable it first",
        )
    store = DeliveryStore(api.nc, api.js, api.settings.names)
    first = await store.events(api.settings.names.delivery_subjects(webhook_id, delivery_id))
    created_first = first[0].event if first else None
    if not isinstance(created_first, DeliveryCreated):
        raise ProblemError(404, "delivery_not_found", f"no delivery {delivery_id!r}")
    replay = DeliveryCreated(
        delivery_id=new_delivery_id(),
        endpoint_id=webhook_id,
        tenant=tenant,
        event=created_first.event,
        job_id=created_first.job_id,
        kind=created_first.kind,
        job_seq=created_first.job_seq,
        occurred_at=created_first.occurred_at,
        replay_of=original.id,
    )
    seq = await store.create(replay)
    log.info(
        "webhook delivery replayed",
        extra={
            "endpoint_id": webhook_id,
            "delivery_id": replay.delivery_id,
            "job_id": replay.job_id,
        },
    )
    # The replay as it was accepted (pending): read back, it may already be delivered.
    return Response(
        pending_delivery(replay, seq or 0),
        status_code=HTTP_202_ACCEPTED,
        headers={"Location": f"/api/webhooks/{webhook_id}/deliveries/{replay.delivery_id}"},
    )


webhook_handlers = [
    options_for("/api/webhooks", "GET, OPTIONS, POST"),
    options_for("/api/webhooks/{webhook_id:str}", "DELETE, GET, OPTIONS"),
    create_webhook,
    list_webhooks,
    get_webhook,
    delete_webhook,
    rotate_webhook_secret,
    enable_webhook,
    list_deliveries,
    get_delivery,
    replay_delivery,
]
