"""Per-tenant weights, limits and quotas: environment defaults, overridden per tenant in the
API-keys file (docs/fairness.md, "Limits").

The keys file (or `AUDIOPREP_API_KEYS` itself) has one key a line:

    <key>=<tenant> [admin] [weight=N] [max_running=N] [max_queued=N]
                   [max_upload_bytes_per_day=SIZE] [max_processing_s_per_day=DURATION]

`admin` marks the key (it may read every tenant's usage); the other options are the tenant's
and hold for all of its keys. `none` lifts a limit the environment sets for everyone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

_TENANT_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SIZE_RE = re.compile(r"(?i)^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?$")
_DURATION_RE = re.compile(r"(?i)^(\d+(?:\.\d+)?)\s*(s|m|h|d)?$")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
UNLIMITED_WORDS = frozenset({"none", "unlimited"})
MAX_WEIGHT = 1000


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """One tenant's share and limits; None = unlimited."""

    weight: int = 1
    max_running: int | None = None
    max_queued: int | None = None
    max_upload_bytes_per_day: int | None = None
    max_processing_s_per_day: float | None = None

    @property
    def needs_admission(self) -> bool:
        """A submit must ask the dispatcher first (a queue limit or a daily quota is set)."""
        return (
            self.max_queued is not None
            or self.max_upload_bytes_per_day is not None
            or self.max_processing_s_per_day is not None
        )


@dataclass(frozen=True)
class TenantPolicies:
    """Everyone's limits: the defaults and the tenants the keys file says more about."""

    defaults: TenantLimits = field(default_factory=TenantLimits)
    tenants: Mapping[str, TenantLimits] = field(default_factory=dict)

    def of(self, tenant: str) -> TenantLimits:
        return self.tenants.get(tenant, self.defaults)

    def weight(self, tenant: str) -> int:
        return self.of(tenant).weight

    def max_running(self, tenant: str) -> int | None:
        return self.of(tenant).max_running

    @property
    def any_admission(self) -> bool:
        """Some tenant has a queue limit or a quota (else the API never asks the dispatcher)."""
        return self.defaults.needs_admission or any(
            t.needs_admission for t in self.tenants.values()
        )


@dataclass(frozen=True)
class ApiKeyFile:
    """What `AUDIOPREP_API_KEYS` (or the file it names) says."""

    keys: dict[str, str] = field(default_factory=dict)  # key → tenant
    admin_keys: frozenset[str] = frozenset()
    options: dict[str, dict[str, str]] = field(default_factory=dict)  # tenant → option → value


OPTION_NAMES = tuple(f.name for f in fields(TenantLimits))


def parse_size(value: str, what: str) -> int:
    """`1048576`, `500M`, `10GiB` → bytes (binary multiples)."""
    match = _SIZE_RE.match(value.strip())
    if not match:
        raise ValueError(f"{what}: {value!r} is not a size (e.g. 500M, 10G, 1048576)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def parse_duration(value: str, what: str) -> float:
    """`3600`, `90m`, `2h`, `1d` → seconds."""
    match = _DURATION_RE.match(value.strip())
    if not match:
        raise ValueError(f"{what}: {value!r} is not a duration (e.g. 3600, 90m, 2h)")
    return float(match.group(1)) * _DURATION_UNITS[(match.group(2) or "").lower()]


def _positive_int(value: str, what: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{what}: {value!r} is not a whole number") from None
    if number < 1:
        raise ValueError(f"{what}: must be at least 1 (or `none` for no limit)")
    return number


def _limit_value(name: str, value: str, what: str) -> int | float | None:
    if value.strip().lower() in UNLIMITED_WORDS:
        if name == "weight":
            raise ValueError(f"{what}: a weight is a number from 1 to {MAX_WEIGHT}")
        return None
    if name == "weight":
        weight = _positive_int(value, what)
        if weight > MAX_WEIGHT:
            raise ValueError(f"{what}: a weight is a number from 1 to {MAX_WEIGHT}")
        return weight
    if name in ("max_running", "max_queued"):
        return _positive_int(value, what)
    if name == "max_upload_bytes_per_day":
        return parse_size(value, what)
    seconds = parse_duration(value, what)
    if seconds <= 0:
        raise ValueError(f"{what}: must be more than 0 (or `none` for no limit)")
    return seconds


def _check_tenant(tenant: str) -> str:
    if not _TENANT_RE.fullmatch(tenant):
        raise ValueError(
            f"AUDIOPREP_API_KEYS: tenant {tenant[:64]!r} must be 1-64 characters of A-Z a-z 0-9 _ -"
        )
    return tenant


def parse_api_key_file(raw: str) -> ApiKeyFile:
    """`key1=tenantA,key2=tenantB admin`, or `@path` (one key a line, `#` comments)."""
    raw = raw.strip()
    if raw.startswith("@"):
        raw = Path(raw[1:]).read_text().replace("\n", ",")
    keys: dict[str, str] = {}
    admins: set[str] = set()
    options: dict[str, dict[str, str]] = {}
    for item in raw.split(","):
        item = item.strip()
        if not item or item.startswith("#"):
            continue
        head, *words = item.split()
        key, sep, tenant = head.partition("=")
        if not sep or not key.strip() or not tenant.strip():
            raise ValueError("AUDIOPREP_API_KEYS entries must look like key=tenant")
        key, tenant = key.strip(), _check_tenant(tenant.strip())
        keys[key] = tenant
        for word in words:
            if word.startswith("#"):
                break
            if word == "admin":
                admins.add(key)
                continue
            name, sep, value = word.partition("=")
            if not sep or name not in OPTION_NAMES:
                raise ValueError(
                    f"AUDIOPREP_API_KEYS: unknown option {word!r} for tenant {tenant!r} "
                    f"(known: admin, {', '.join(OPTION_NAMES)})"
                )
            mine = options.setdefault(tenant, {})
            if mine.get(name, value) != value:
                raise ValueError(
                    f"AUDIOPREP_API_KEYS: tenant {tenant!r} has two values for {name}: "
                    f"{mine[name]!r} and {value!r}"
                )
            mine[name] = value
    return ApiKeyFile(keys=keys, admin_keys=frozenset(admins), options=options)


def parse_weights(raw: str) -> dict[str, int]:
    """`AUDIOPREP_TENANT_WEIGHTS=tenantA=3,tenantB=1`."""
    weights: dict[str, int] = {}
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        tenant, sep, value = item.partition("=")
        if not sep:
            raise ValueError("AUDIOPREP_TENANT_WEIGHTS entries must look like tenant=weight")
        weight = _limit_value("weight", value, f"AUDIOPREP_TENANT_WEIGHTS {tenant.strip()}")
        assert isinstance(weight, int)
        weights[_check_tenant(tenant.strip())] = weight
    return weights


ENV_DEFAULTS = {
    "max_running": "AUDIOPREP_TENANT_MAX_RUNNING",
    "max_queued": "AUDIOPREP_TENANT_MAX_QUEUED",
    "max_upload_bytes_per_day": "AUDIOPREP_TENANT_MAX_UPLOAD_BYTES_PER_DAY",
    "max_processing_s_per_day": "AUDIOPREP_TENANT_MAX_PROCESSING_S_PER_DAY",
}


def policies_from_env(env: Mapping[str, str], key_file: ApiKeyFile) -> TenantPolicies:
    """Defaults from AUDIOPREP_TENANT_*, then each tenant's options from the keys file."""
    defaults: dict[str, object] = {}
    for name, variable in ENV_DEFAULTS.items():
        value = env.get(variable, "").strip()
        if value and value != "0":  # unset or 0: unlimited (the documented default)
            defaults[name] = _limit_value(name, value, variable)
    base = TenantLimits(**defaults)  # type: ignore[arg-type]
    tenants: dict[str, TenantLimits] = {
        tenant: replace(base, weight=weight)
        for tenant, weight in parse_weights(env.get("AUDIOPREP_TENANT_WEIGHTS", "")).items()
    }
    for tenant, opts in key_file.options.items():
        changes = {
            name: _limit_value(name, value, f"AUDIOPREP_API_KEYS {tenant} {name}")
            for name, value in opts.items()
        }
        tenants[tenant] = replace(tenants.get(tenant, base), **changes)  # type: ignore[arg-type]
    return TenantPolicies(defaults=base, tenants=tenants)
