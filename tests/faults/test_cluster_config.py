"""The checked-in cluster configs are what shared/nats_cluster.py generates (kept in sync)."""

from __future__ import annotations

from audioprep.shared.nats_cluster import DEPLOY_DIR, default_ports, node_config


def test_deploy_cluster_configs_match_the_generator() -> None:
    clients, routes = default_ports()
    assert clients == [4222, 4223, 4224] and routes == [6222, 6223, 6224]
    for i in range(3):
        text = (DEPLOY_DIR / f"node{i + 1}.conf").read_text()
        assert text == node_config(i, clients, routes), f"regenerate node{i + 1}.conf"
        assert "sync_interval: always" in text and f"server_name: audioprep-n{i + 1}" in text
    assert (DEPLOY_DIR / "start.sh").stat().st_mode & 0o111
