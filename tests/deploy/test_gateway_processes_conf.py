"""GATEWAY_PROCESSES in the two supervisord configurations: `make run`'s (scripts/run_stack.py)
and the gateway container's (gateway/supervisord.conf, docker-compose.yml). Parsed by supervisord
itself; the processes sharing one port are tested in tests/gateway/test_gateway_processes.py."""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

from supervisor.options import ServerOptions

from scripts.run_stack import supervisord_conf
from tests.deploy.conftest import REPO

GATEWAY_CONF = REPO / "gateway" / "supervisord.conf"


def programs(conf: Path) -> dict[str, list[tuple[str, dict[str, str] | None]]]:
    """supervisord's own reading: group name -> [(process name, environment)]."""
    options = ServerOptions()
    options.realize(["-c", str(conf)])
    return {
        group.name: [(process.name, process.environment) for process in group.process_configs]
        for group in options.process_group_configs
    }


def test_make_run_starts_gateway_processes_each_told_how_many(tmp_path: Path) -> None:
    conf = tmp_path / "supervisord.conf"
    conf.write_text(supervisord_conf(tmp_path, 2, 9100, 4, gateway_processes=3))
    gateways = programs(conf)["gateway"]
    assert [name for name, _ in gateways] == ["gateway-0", "gateway-1", "gateway-2"]
    assert all(env == {"GATEWAY_PROCESSES": "3"} for _, env in gateways)

    conf.write_text(supervisord_conf(tmp_path, 2, 9100, 4))
    assert [name for name, _ in programs(conf)["gateway"]] == ["gateway"]  # one: named as before


def test_the_gateway_container_runs_gateway_processes_of_them() -> None:
    with mock.patch.dict(os.environ, {"GATEWAY_PROCESSES": "2"}):
        gateways = programs(GATEWAY_CONF)["gateway"]
    assert [name for name, _ in gateways] == ["gateway-0", "gateway-1"]
