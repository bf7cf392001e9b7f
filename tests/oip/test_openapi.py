"""The OpenAPI 3.1 document: it covers exactly the routes that exist, and schemathesis finds no fault."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

from aiohttp import hdrs
from aiohttp.web_urldispatcher import StaticResource

from common.settings import Settings
from gateway import init_app
from gateway.openapi import DOCUMENT_PATH, render
from tests.oip.conftest import MODEL_NAME
from tests.security.conftest import Stack

# Schemathesis' checks of "nothing breaks and every answer is what the document says". (Its
# positive_data_acceptance would also want a 2xx for any schema-valid body: random bytes are
# schema-valid uploads, and rightly get a 415.)
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)
MAX_EXAMPLES = 10
SEED = 20261202


def _router_operations() -> set[tuple[str, str]]:
    app = init_app(Settings())  # routes only: connections open at start-up, which never happens here
    operations = set()
    for resource in app.router.resources():
        path = resource.canonical
        if isinstance(resource, StaticResource):
            path += "/{filename}"
        for route in resource:
            if route.method != hdrs.METH_HEAD:  # aiohttp adds HEAD to every GET
                operations.add((path, route.method.lower()))
    return operations


def _document_operations(document: dict) -> set[tuple[str, str]]:
    return {(path, method) for path, item in document["paths"].items() for method in item}


def test_document_covers_every_route_and_nothing_else() -> None:
    document = json.loads(DOCUMENT_PATH.read_text())
    routes, documented = _router_operations(), _document_operations(document)
    assert routes - documented == set(), "routes missing from gateway/openapi.json"
    assert documented - routes == set(), "operations documented that no route serves"
    assert document["openapi"] == "3.1.0"
    assert ("/v2/models/{model_name}/infer", "post") in routes


def test_committed_document_is_the_built_one() -> None:
    assert DOCUMENT_PATH.read_text() == render(), (
        'gateway/openapi.json is stale: python -c "from gateway.openapi import write; write()"'
    )


def test_gateway_serves_the_document(oip_stack: Stack) -> None:
    with urllib.request.urlopen(f"{oip_stack.base_url}/openapi.json", timeout=5) as response:
        assert response.headers.get_content_type() == "application/json"
        assert response.read() == DOCUMENT_PATH.read_bytes()


def test_schemathesis_finds_no_fault(oip_stack: Stack, model_version: str, tmp_path: Path) -> None:
    """Schemathesis generates requests for every operation of /openapi.json: no 5xx, every answer conforms."""
    config = tmp_path / "schemathesis.toml"
    # The served model's name and version in the paths, so that requests reach inference (other
    # names are a 404, which tritonclient's tests cover).
    config.write_text(
        f'[parameters]\n"path.model_name" = "{MODEL_NAME}"\n"path.model_version" = "{model_version}"\n'
    )
    report = tmp_path / "report.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(config),
            "run",
            f"{oip_stack.base_url}/openapi.json",
            "--checks",
            ",".join(CHECKS),
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            str(SEED),
            "--workers",
            "1",
            "--request-timeout",
            "20",
            "--report",
            "json",
            "--report-json-path",
            str(report),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,  # its cache stays out of the repo
    )
    assert report.exists(), run.stdout[-4000:] + run.stderr[-4000:]
    summary = json.loads(report.read_text())
    cases = summary["test_cases"]
    print(
        f"schemathesis: {summary['operations']['tested']} operations, {cases['generated']} cases generated, "
        f"{cases['with_failures']} with failures, {cases['errored']} errored"
    )
    assert run.returncode == 0, run.stdout[-6000:]
    assert summary["failures"] == [] and summary["errors"] == []
    # Every operation but GET /openapi.json, which schemathesis leaves out (it is the schema it loaded).
    assert summary["operations"]["tested"] == len(_router_operations()) - 1, summary["operations"]
    assert cases["generated"] >= 300 and cases["with_failures"] == 0 and cases["errored"] == 0
    # The gateway itself agrees: no 5xx on any route, no unhandled error in its log.
    assert oip_stack.gateway_5xx() == {}
    assert "unhandled error" not in oip_stack.gateway.log_text()
