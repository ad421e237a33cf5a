"""`/docs` (Swagger UI) and `/redoc` pages that load their scripts from this service, not from a CDN.

FastAPI's own pages fetch Swagger UI and ReDoc from jsDelivr and render blank on a host without
internet. These are the same pages (FastAPI's "self-hosting JavaScript and CSS for docs" recipe) over
the copies vendored in `static/vendor/` (served by the dashboard's `/static` mount).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse

VENDOR_URL = "/static/vendor"
OAUTH2_REDIRECT_PATH = "/docs/oauth2-redirect"
# Swagger UI sends the spec to validator.swagger.io for a badge unless told not to: no outside calls.
SWAGGER_UI_PARAMETERS = {"validatorUrl": None}

router = APIRouter(include_in_schema=False)


def _openapi_url(request: Request) -> str:
    return str(request.app.openapi_url)


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=_openapi_url(request),
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{VENDOR_URL}/swagger-ui/swagger-ui-bundle.js",
        swagger_css_url=f"{VENDOR_URL}/swagger-ui/swagger-ui.css",
        swagger_favicon_url=f"{VENDOR_URL}/swagger-ui/favicon-32x32.png",
        oauth2_redirect_url=OAUTH2_REDIRECT_PATH,
        swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
    )


@router.get(OAUTH2_REDIRECT_PATH)
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(
        openapi_url=_openapi_url(request),
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{VENDOR_URL}/redoc/redoc.standalone.js",
        redoc_favicon_url=f"{VENDOR_URL}/swagger-ui/favicon-32x32.png",
        with_google_fonts=False,
    )


# FastAPI's own 422 schemas come without descriptions; a client needs to know how to read them.
VALIDATION_ERROR_FIELDS = {
    "HTTPValidationError": {"detail": "One entry per invalid input."},
    "ValidationError": {
        "loc": "Where: 'body', 'query' or 'path', then the field's path (e.g. body, hyperparameters).",
        "msg": "What is wrong with it; for hyperparameters, also the accepted keys.",
        "type": "pydantic's error type, e.g. 'greater_than_equal'.",
        "input": 'The value sent (NaN shown as "nan").',
        "ctx": "Details of the rule broken, e.g. the bound.",
    },
}


def describe_validation_errors(app: FastAPI) -> None:
    """Give the OpenAPI document's 422 schemas (FastAPI's) a description on every field."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        document = build()  # built once and cached by FastAPI: described in place, once
        schemas = document.get("components", {}).get("schemas", {})
        for name, descriptions in VALIDATION_ERROR_FIELDS.items():
            for field, description in descriptions.items():
                prop = schemas.get(name, {}).get("properties", {}).get(field)
                if prop is not None:
                    prop.setdefault("description", description)
        return document

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend it
