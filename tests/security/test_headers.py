"""Security headers, what /uploads serves, escaping on the page, and no secrets in the repo.

tests/gateway covers the basics (nosniff on a few responses, the page's CSP,
an escaped label); this suite checks every kind of response of a real gateway
process, a GIF/HTML polyglot, planted files in the upload folder, escaping of
the user's own text, and the repository's files.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.uploads import UploadStore
from tests.security import images
from tests.security.conftest import Stack
from tests.support.processes import REPO_ROOT

PAGE_DIRECTIVES = {
    "default-src": "'self'",
    "script-src": "'none'",
    "object-src": "'none'",
    "base-uri": "'none'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}


def csp(header: str) -> dict[str, str]:
    directives = (part.strip().split(None, 1) for part in header.split(";") if part.strip())
    return {d[0]: d[1] if len(d) > 1 else "" for d in directives}


async def request(
    stack: Stack, method: str, path: str, **kwargs: Any
) -> tuple[aiohttp.ClientResponse, bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, f"{stack.base_url}{path}", **kwargs) as response:
            return response, await response.read()


def upload(data: bytes, filename: str = "photo.jpg", content_type: str = "image/jpeg") -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=filename, content_type=content_type)
    return form


async def test_every_kind_of_response_has_nosniff_and_a_csp(stack: Stack, photos) -> None:
    coffee = photos["coffee"].read_bytes()
    response, body = await request(stack, "POST", "/predict", data=upload(coffee))
    assert response.status == 200, body
    stored = json.loads(body)["image"]
    cases: list[tuple[str, str, dict[str, Any], int]] = [
        ("GET", "/", {}, 200),
        ("POST", "/", {"data": upload(b"plain text", "x.png")}, 415),  # the page, with an error
        ("POST", "/", {"data": upload(coffee)}, 200),  # the page, with a result
        ("GET", "/predict", {}, 405),
        ("POST", "/predict", {}, 400),
        ("POST", "/predict", {"data": upload(b"<html></html>")}, 415),
        ("POST", "/predict", {"data": upload(coffee[:5000])}, 422),
        (
            "POST",
            "/predict",
            {"data": b"\xff\xd8\xff" + bytes(2 * 1024 * 1024), "headers": {"Content-Type": "image/jpeg"}},
            413,
        ),
        ("POST", "/predict?top_k=9", {"data": upload(coffee)}, 400),
        ("POST", "/feedback", {"json": {"image": "nope", "prediction": "x", "score": 0.1}}, 400),
        ("POST", "/feedback", {"json": {"image": f"{'a' * 64}.jpg", "prediction": "x", "score": 0.1}}, 404),
        ("POST", "/feedback", {"json": {"image": stored, "prediction": "espresso", "score": 0.9}}, 200),
        ("POST", "/feedback", {"data": "hi", "headers": {"Content-Type": "text/plain"}}, 415),
        ("GET", f"/uploads/{stored}", {}, 200),
        ("GET", f"/uploads/{'0' * 64}.jpg", {}, 404),
        ("GET", "/uploads/nope.html", {}, 404),
        ("GET", "/static/style.css", {}, 200),
        ("GET", "/static/favicon.svg", {}, 200),
        ("GET", "/static/missing.css", {}, 404),
        ("GET", "/no/such/page", {}, 404),
        ("GET", "/health/live", {}, 200),
        ("GET", "/health/ready", {}, 200),
        ("GET", "/metrics", {}, 200),
        ("DELETE", "/", {}, 405),
    ]
    for method, path, kwargs, status in cases:
        response, body = await request(stack, method, path, **kwargs)
        where = f"{method} {path} -> {response.status}"
        assert response.status == status, (where, body[:300])
        assert response.headers.get("X-Content-Type-Options") == "nosniff", where
        policy = csp(response.headers.get("Content-Security-Policy", ""))
        if response.content_type == "text/html":
            assert all(policy.get(k) == v for k, v in PAGE_DIRECTIVES.items()), (where, policy)
        else:  # nothing else may run anything, even opened directly in a browser
            assert policy.get("default-src") == "'none'" and "sandbox" in policy, (where, policy)


async def test_the_page_csp_is_restrictive_and_the_page_needs_nothing_more(stack: Stack, photos) -> None:
    for method, kwargs in (("GET", {}), ("POST", {"data": upload(photos["chelsea"].read_bytes())})):
        response, body = await request(stack, method, "/", **kwargs)
        assert response.status == 200
        header = response.headers["Content-Security-Policy"]
        policy = csp(header)
        assert all(policy.get(k) == v for k, v in PAGE_DIRECTIVES.items()), policy
        # No loophole: no inline code, no eval, no wildcard or scheme sources.
        assert not re.search(r"'unsafe-|\*|data:|https?:|blob:", header), header
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        html = body.decode()
        # What that CSP would block is not there: no script, no inline style or handler, nothing external.
        assert "<script" not in html and "style=" not in html
        assert not re.search(r"\son\w+\s*=", html)
        assert not re.search(r'(src|href|action)="(https?:)?//', html)


async def test_a_gif_html_polyglot_is_served_as_a_gif(stack: Stack) -> None:
    polyglot = images.gif_polyglot()
    assert b"<script>" in polyglot
    for kwargs in (
        {"data": upload(polyglot, "page.html", "text/html")},
        {"data": polyglot, "headers": {"Content-Type": "text/html"}},
    ):
        response, body = await request(stack, "POST", "/predict", **kwargs)
        assert response.status == 200, body
        image_id = json.loads(body)["image"]
        assert image_id == f"{hashlib.sha256(polyglot).hexdigest()}.gif"
    served, content = await request(stack, "GET", f"/uploads/{image_id}")
    assert served.status == 200 and content == polyglot
    assert served.headers["Content-Type"] == "image/gif"
    assert served.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in csp(served.headers["Content-Security-Policy"])
    assert served.headers["Content-Disposition"] == f'inline; filename="{image_id}"'


async def test_only_well_formed_ids_are_served_from_the_upload_folder(stack: Stack) -> None:
    """Files planted in the folder under other names are never served, whatever they hold."""
    stack.upload_dir.mkdir(parents=True, exist_ok=True)
    planted = [
        "evil.html",
        f"{'c' * 64}.html",
        f"{'c' * 64}.JPG",
        f"{'c' * 64}.jpg.html",
        ".incoming-abc.part",
        f"{'c' * 63}.jpg",
        f"{'C' * 64}.jpg",
    ]
    for name in planted:
        (stack.upload_dir / name).write_bytes(b"<script>alert(1)</script>")
    try:
        for name in planted:
            response, body = await request(stack, "GET", f"/uploads/{name}")
            assert response.status == 404, (name, body)
            assert b"<script>" not in body
    finally:
        for name in planted:
            (stack.upload_dir / name).unlink()


def test_ids_are_validated_before_the_disk_is_touched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = UploadStore(tmp_path)
    touched: list[str] = []

    def spy(self: Path, *args: object, **kwargs: object) -> bool:
        touched.append(str(self))
        return False

    monkeypatch.setattr(Path, "is_file", spy)
    monkeypatch.setattr(Path, "exists", spy)
    monkeypatch.setattr(Path, "stat", spy)
    for bad in (
        "../../etc/passwd",
        "/etc/passwd",
        f"{'a' * 64}.jpg/../../x",
        f"{'a' * 64}.html",
        f"{'a' * 64}.jpg\n",
        "",
        ".",
        "..",
        f"{'a' * 64}.jpg\x00",
    ):
        assert store.path_for(bad) is None
    assert touched == []
    assert store.path_for(f"{'a' * 64}.jpg") is None  # well formed: only now is the disk asked
    assert touched == [str(tmp_path / f"{'a' * 64}.jpg")]


async def test_user_text_is_escaped_on_the_page(stack: Stack, photos) -> None:
    script = "<script>alert(1)</script>"
    coffee = photos["coffee"].read_bytes()
    _response, body = await request(stack, "POST", "/predict", data=upload(coffee))
    image_id = json.loads(body)["image"]
    # The thanks page repeats the user's label.
    thanks, html = await request(
        stack,
        "POST",
        "/feedback",
        data={"image": image_id, "prediction": "espresso", "score": "0.9", "correct_label": script},
    )
    assert thanks.status == 200
    assert script.encode() not in html and b"&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # An error message that quotes the request (a multipart boundary) is escaped too.
    boundary = '"<script>alert(2)</script>"'
    error, html = await request(
        stack, "POST", "/", data=b"x", headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert error.status == 400 and error.content_type == "text/html"
    assert b"<script>alert(2)" not in html and b"&lt;script&gt;alert(2)" in html


# -- no credentials in the repository --------------------------------------------

# Documented local defaults (README, .env.example): the broker's guest user and the compose password.
ALLOWED_SECRETS = {"guest", "serving-local", ""}
# Obvious dummies that tests pass around (tests/deploy checks a custom password reaches compose).
TEST_DUMMIES = {"s3cret", "p", "******"}  # "******": what redact() shows instead of a password
TOKEN_PATTERNS = {
    "private key": re.compile(r"-----BEGIN (RSA |EC |DSA |OPENSSH |ENCRYPTED )?PRIVATE KEY-----"),
    "AWS access key": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),
    "JWT": re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\."),
}
URL_CREDENTIALS = re.compile(r"\b[a-z][a-z0-9+.-]*://([^:/@\s'\"]+):([^@/\s'\"]+)@")
ASSIGNED_SECRET = re.compile(
    r"""(?ix)\b[\w.-]*(password|passwd|secret|api_?key|access_?key|token)[\w.-]*
        [ \t]*[:=][ \t]*["']?([^\s"',;)\\]*)"""
)
SHELL_DEFAULT = re.compile(r"\$\{\w+:?-([^}]*)\}")
# ${VAR:?message}: a value that must be given (compose's passwords), not a value.
REQUIRED_VARIABLE = re.compile(r"\$\{\w+:?\?[^}]*\}")


def _repository_files() -> list[Path]:
    """Tracked files, and new ones git would track (not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    return [REPO_ROOT / name.decode() for name in listed if name and (REPO_ROOT / name.decode()).is_file()]


def _is_placeholder(value: str) -> bool:
    # A template or a reference, not a value: {password}, $VAR, <your-password>, os.environ..., a type,
    # a CONSTANT, a YAML boolean, or a placeholder that says so (REPLACE-ME...).
    return bool(
        re.fullmatch(
            r"[{$<%].*|\w+\(.*|str|bytes|None|\w+\.\w+.*|\w+\[.*|[A-Z][A-Z0-9_]*|true|false|REPLACE-ME.*",
            value,
        )
    )


def test_no_credentials_in_the_repository() -> None:
    files = _repository_files()
    assert len(files) > 50, "git ls-files found too little: wrong folder?"
    assert not [p for p in files if p.name == ".env"], ".env (real settings) must never be committed"
    findings: list[str] = []
    for path in files:
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary: images, models
        text = SHELL_DEFAULT.sub(lambda m: m.group(1), data.decode("utf-8", "replace"))
        text = REQUIRED_VARIABLE.sub("", text)
        where = path.relative_to(REPO_ROOT)
        allowed = ALLOWED_SECRETS | (TEST_DUMMIES if where.parts[0] == "tests" else set())
        for name, pattern in TOKEN_PATTERNS.items():
            findings += [f"{where}: {name}" for _ in pattern.finditer(text)]
        for match in URL_CREDENTIALS.finditer(text):
            password = match.group(2)
            if password not in allowed and not _is_placeholder(password):
                findings.append(f"{where}: password in URL {match.group(0)!r}")
        for match in ASSIGNED_SECRET.finditer(text):
            value = match.group(2)
            if value not in allowed and not _is_placeholder(value) and len(value) >= 4:
                findings.append(f"{where}: {match.group(0)!r}")
    assert not findings, "possible credentials:\n" + "\n".join(findings)
