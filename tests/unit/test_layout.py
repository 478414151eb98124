"""The structure rules of docs/architecture.md ("Layout"), checked on the source itself."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "audioprep"
SERVICES = ("api", "worker", "projector", "notifier", "cli")
# The CLI launches the services (their `main`) and runs the projector's rebuild.
LAUNCHERS = {
    ("cli", "audioprep.services.api.app"),
    ("cli", "audioprep.services.worker.main"),
    ("cli", "audioprep.services.projector.main"),
    ("cli", "audioprep.services.notifier.main"),
    ("cli", "audioprep.services.projector.rebuild"),
}
IMPORT = re.compile(r"^\s*(?:from|import)\s+(audioprep\.[\w.]+)", re.M)


def _sources(under: Path) -> list[Path]:
    return sorted(p for p in under.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: Path) -> set[str]:
    return set(IMPORT.findall(path.read_text()))


def test_no_service_imports_another_services_modules() -> None:
    wrong = []
    for service in SERVICES:
        for path in _sources(PACKAGE / "services" / service):
            for module in _imports(path):
                parts = module.split(".")
                if len(parts) < 3 or parts[1] != "services" or parts[2] == service:
                    continue
                if (service, module) not in LAUNCHERS:
                    wrong.append(f"{path.relative_to(PACKAGE)}: {module}")
    assert wrong == []


def test_the_domain_imports_only_itself() -> None:
    wrong = [
        f"{path.name}: {module}"
        for path in _sources(PACKAGE / "domain")
        for module in _imports(path)
        if not module.startswith("audioprep.domain")
    ]
    assert wrong == []


def test_the_fold_is_applied_only_by_the_projector_and_the_view_reader() -> None:
    allowed = {
        PACKAGE / "domain" / "fold.py",
        PACKAGE / "services" / "projector" / "runner.py",
        PACKAGE / "services" / "projector" / "rebuild.py",
        PACKAGE / "shared" / "job_views.py",
    }
    users = {p for p in _sources(PACKAGE) if "audioprep.domain.fold" in _imports(p)}
    assert users <= allowed, sorted(str(p.relative_to(PACKAGE)) for p in users - allowed)


def test_no_name_on_the_wire_is_spelled_outside_the_name_table() -> None:
    names = r"""["'](?:JOBS|JOBS_DLQ|WEBHOOKS)["']"""
    prefixes = r"""["'](?:jobs\.|webhooks\.|\$JS\.|\$KV\.|KV_|workers-|inflight\.|alias\.)"""
    literal = re.compile(f"{names}|{prefixes}")
    table = PACKAGE / "shared" / "names.py"
    wrong = [
        f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}"
        for path in _sources(PACKAGE)
        if path != table
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if literal.search(line)
    ]
    assert wrong == []
