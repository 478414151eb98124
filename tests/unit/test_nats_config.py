"""The least-privilege NATS config is generated from the name table (nats_permissions.py), and
deploy/nats-prod.conf is exactly that output for the default prefix."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from audioprep.services.cli.main import main
from audioprep.shared.names import Names
from audioprep.shared.nats_permissions import (
    REGENERATE,
    ROLES,
    password_env,
    render_authorization,
    render_config,
    service_users,
    user_name,
)
from audioprep.shared.nats_server import REPO_ROOT, nats_server_binary

PROD_CONFIG = REPO_ROOT / "deploy" / "nats-prod.conf"


def test_the_committed_prod_config_is_the_generated_one() -> None:
    generated = render_config([Names()])
    committed = PROD_CONFIG.read_text()
    assert committed == generated, (
        f"deploy/nats-prod.conf differs from the config generated from the name table: "
        f"regenerate it with `{REGENERATE}` (and commit it)"
    )


def test_every_grant_has_a_reason_and_no_subject_is_listed_twice() -> None:
    for n in (Names(), Names("pp")):
        for u in service_users(n):
            for grant in (*u.publish, *u.subscribe):
                assert grant.reason.strip() and grant.subjects, (u.role, grant)
            if not u.everything:
                for subjects in (u.publish_subjects(), u.subscribe_subjects()):
                    assert ">" not in subjects and len(subjects) == len(set(subjects))
                    assert all(" " not in s and s for s in subjects), subjects


def test_reasons_are_written_into_the_config_as_comments() -> None:
    text = render_config([Names()])
    for u in service_users(Names()):
        if u.everything:
            continue
        block = text.split(f"  {u.role.upper()} = {{", 1)[1].split("\n  }\n", 1)[0]
        comments = " ".join(
            line.strip().removeprefix("# ") for line in block.splitlines() if "#" in line
        )
        for grant in (*u.publish, *u.subscribe):
            assert " ".join(grant.reason.split()) in comments, (u.role, grant.reason)


def _tokens(subject: str) -> list[str]:
    return subject.split(".")


@pytest.mark.parametrize("prefix", ["pp", "a-b_9"])
def test_a_prefixed_deployment_names_only_its_own_subjects(prefix: str) -> None:
    """Every subject a prefixed service user may use names the prefix (a stream, bucket,
    subject root or its own inbox), so it can't reach another deployment's names."""
    own = re.compile(rf"^(?:{re.escape(prefix)}|(?:KV_)?{re.escape(prefix)}[_-].*)$")
    n = Names(prefix)
    for u in service_users(n):
        assert u.user == f"{prefix}-{u.role}"
        if u.everything:
            continue
        for subject in (*u.publish_subjects(), *u.subscribe_subjects()):
            assert any(own.match(t) for t in _tokens(subject)), (u.role, subject)
    default = {s for u in service_users(Names()) for s in u.publish_subjects()}
    prefixed = {s for u in service_users(n) if not u.everything for s in u.publish_subjects()}
    assert default.isdisjoint(prefixed)


def test_user_names_and_password_variables() -> None:
    assert [user_name(Names(), r) for r in ROLES] == list(ROLES)
    assert password_env(Names(), "notifier") == "AUDIOPREP_NATS_NOTIFIER_PASSWORD"
    assert password_env(Names("a-b"), "api") == "AUDIOPREP_NATS_A_B_API_PASSWORD"
    with pytest.raises(ValueError, match="same users"):
        render_authorization([Names("a-b"), Names("a_b")])


def test_the_command_prints_the_config_for_the_configured_prefix(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AUDIOPREP_NAME_PREFIX", raising=False)
    assert main(["nats-config"]) == 0
    assert capsys.readouterr().out == PROD_CONFIG.read_text()
    monkeypatch.setenv("AUDIOPREP_NAME_PREFIX", "pp")
    assert main(["nats-config", "--authorization-only"]) == 0
    assert capsys.readouterr().out == render_authorization([Names("pp")])
    assert main(["nats-config", "--prefix", "a", "--prefix", "b"]) == 0
    assert capsys.readouterr().out == render_config([Names("a"), Names("b")])
    assert main(["nats-config", "--prefix", "no.dots"]) == 2
    assert "name prefix" in capsys.readouterr().err


def test_nats_server_accepts_the_generated_configs(tmp_path: Path) -> None:
    """`nats-server -t` parses the config of one and of two prefixed deployments."""
    (tmp_path / "nats.conf").write_text((REPO_ROOT / "deploy" / "nats.conf").read_text())
    deployments = [Names("pp"), Names("qq")]
    config = tmp_path / "two.conf"
    config.write_text(render_config(deployments))
    env = {"PATH": "/usr/bin:/bin"}
    env.update({u.password_env: "pw" for n in deployments for u in service_users(n)})
    ok = subprocess.run(
        [nats_server_binary(), "-c", str(config), "-t"], env=env, capture_output=True
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    del env[password_env(Names("qq"), "notifier")]
    bad = subprocess.run(
        [nats_server_binary(), "-c", str(config), "-t"], env=env, capture_output=True
    )
    assert bad.returncode != 0
    assert b"AUDIOPREP_NATS_QQ_NOTIFIER_PASSWORD" in bad.stdout + bad.stderr
