"""Rendering of the one HTML page; the views and the error translation both use it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from gateway.state import GATEWAY

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGE_TEMPLATE = "index.html"


def setup_templates(app: web.Application) -> None:
    """Jinja2 with autoescaping on for every template (user text reaches the page)."""
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        default_helpers=True,
    )


def render_page(
    request: web.Request,
    context: dict[str, Any],
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """The page, with the upload form and whatever ``context`` adds (result, error, thanks)."""
    settings = request.app[GATEWAY].settings
    full = {
        "max_upload_mb": f"{settings.max_upload_mb:g}",
        "result": None,
        "error": None,
        "thanks": None,
        "request": request,
        **context,
    }
    response = aiohttp_jinja2.render_template(PAGE_TEMPLATE, request, full, status=status)
    if headers:
        response.headers.update(headers)
    return response
