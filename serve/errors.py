"""Error answers of the HTTP API: every 4xx and 5xx is JSON naming what was wrong and where.

- a body that fails its contract: 422, one `detail` entry per field (`query`, `filters.brand`, `page`);
- malformed JSON: 400 naming `body`; a POST whose content type is not JSON: 415;
- a full queue anywhere in the graph: 503 with `Retry-After` (Serve's own proxy answers 503 with
  `Retry-After` too when the ingress queue itself is full);
- anything unexpected: 500 with the request id, never a traceback.
"""
from __future__ import annotations

import logging
import uuid
from typing import Any, Iterable, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("ray.serve")
RETRY_AFTER_S = 1


def json_error(status: int, error: str, detail: Iterable[tuple[str, str]] = (), request_id: str = "",
               retry_after: Optional[int] = None) -> JSONResponse:
    """The API's error body: {"error", "detail": [{"field", "message"}], "request_id"}."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse({"error": error, "detail": [{"field": f, "message": m} for f, m in detail],
                         "request_id": request_id or uuid.uuid4().hex}, status_code=status, headers=headers)


def _field(loc: Iterable[Any]) -> str:
    """`filters.brand` from FastAPI's ("body", "filters", "brand"): the location prefix dropped."""
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def request_id(request: Request) -> str:
    """The caller's X-Request-Id, else a fresh one: the id every answer and error carries."""
    return request.headers.get("x-request-id") or uuid.uuid4().hex


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers and the JSON content-type check on `app`."""

    @app.middleware("http")
    async def require_json(request: Request, call_next):
        if request.method in ("POST", "PUT", "PATCH"):
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                return json_error(415, "unsupported content type",
                                  [("content-type", f"expected application/json, got {ctype or 'none'}")], request_id(request))
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            msg = next(e.get("ctx", {}).get("error", e.get("msg", "")) for e in errors if e.get("type") == "json_invalid")
            return json_error(400, "malformed JSON", [("body", str(msg))], request_id(request))
        detail = []
        for e in errors:
            field = _field(e.get("loc", ()))
            if e.get("type") == "extra_forbidden":
                detail.append((field, f"unknown field {field.split('.')[-1]!r}"))
            elif e.get("type") == "missing":
                detail.append((field, "field required"))
            else:
                detail.append((field, str(e.get("msg", "")).removeprefix("Value error, ")))
        return json_error(422, "validation failed", detail, request_id(request))

    @app.exception_handler(BackPressureError)
    async def overloaded(request: Request, exc: BackPressureError):
        return json_error(503, "overloaded: a stage's queue is full", [("", str(getattr(exc, "message", exc)))],
                          request_id(request), retry_after=RETRY_AFTER_S)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return json_error(exc.status_code, str(exc.detail), [("path", request.url.path)], request_id(request))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        rid = request_id(request)
        logger.exception("request %s failed", rid)
        return json_error(500, f"internal error ({type(exc).__name__}); request id {rid}", [], rid)
