"""The service subprocess helpers live in :mod:`devtools.processes` (the benchmark uses them too)."""

from devtools.processes import (
    REPO_ROOT,
    ServiceProcess,
    free_port,
    http_ok,
    service_env,
    start_gateway,
    start_worker,
)

__all__ = [
    "REPO_ROOT",
    "ServiceProcess",
    "free_port",
    "http_ok",
    "service_env",
    "start_gateway",
    "start_worker",
]
