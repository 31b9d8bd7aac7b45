"""Serves the Swagger UI files from the `swagger-ui-bundle` package, so the live docs pages
load with no internet."""

from __future__ import annotations

from flask import Blueprint, send_from_directory
from swagger_ui_bundle import swagger_ui_path

URL_PREFIX = "/docs-assets/swagger-ui"

blp = Blueprint("docs_assets", __name__, url_prefix=URL_PREFIX)


@blp.get("/<path:filename>")
def asset(filename: str):
    return send_from_directory(str(swagger_ui_path), filename, max_age=86400)
