"""The URL map (docs/DESIGN.md's HTTP table)."""

from __future__ import annotations

from aiohttp import web

from gateway import oip, openapi, views
from gateway.expect import expect_upload
from gateway.pages import STATIC_DIR


def setup_routes(app: web.Application) -> None:
    router = app.router
    router.add_get("/", views.index, name="index")
    router.add_post("/", views.upload_page, name="upload", expect_handler=expect_upload)
    router.add_post("/predict", views.predict, name="predict", expect_handler=expect_upload)
    router.add_post("/feedback", views.feedback, name="feedback")
    router.add_get("/uploads/{image_id}", views.uploaded_image, name="uploaded_image")
    router.add_get("/health/live", views.live, name="live")
    router.add_get("/health/ready", views.ready, name="ready")
    router.add_get("/metrics", views.metrics, name="metrics")
    router.add_static("/static", STATIC_DIR, name="static", follow_symlinks=False, show_index=False)
    router.add_get("/openapi.json", openapi.document, name="openapi")
    # The Open Inference Protocol (KServe v2), gateway/oip.py; each model route also with a version.
    router.add_get("/v2", oip.server_metadata, name="v2_server")
    router.add_get("/v2/health/live", oip.server_live, name="v2_live")
    router.add_get("/v2/health/ready", oip.server_ready, name="v2_ready")
    router.add_post("/v2/repository/index", oip.repository_index, name="v2_repository_index")
    model = "/v2/models/{model_name}"
    for prefix, suffix in ((model, ""), (f"{model}/versions/{{model_version}}", "_version")):
        router.add_get(prefix, oip.model_metadata, name=f"v2_model{suffix}")
        router.add_get(f"{prefix}/ready", oip.model_ready, name=f"v2_model_ready{suffix}")
        router.add_post(f"{prefix}/infer", oip.infer, name=f"v2_infer{suffix}")
