"""How the search service reports failures: one JSON error body for every status, documented.

Every 4xx and 5xx carries ``{"detail": "<one line for a person>"}``; a 422 also lists the
validation ``errors``. Messages never carry a server path: the index folder and catalog root are
replaced by their names before a message leaves (a safety net: library messages avoid paths too).
"""
from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from catalogclip.search.index import IncompatibleModelError
from catalogclip.search.query import QueryError
from catalogclip.search.uploads import ImageRejected

log = logging.getLogger(__name__)


class ValidationItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    detail: str
    errors: list[ValidationItem] | None = None


_WHY = {
    400: "Bad input: an empty, overlong or malformed query or filters (unknown field, bad range ...)",
    404: "No such product, image or route",
    409: "The index was built by another model than the one encoding queries",
    413: "The request body, one of its form fields or the image is too large",
    415: "The upload is not an image in an accepted format, or cannot be decoded",
    422: "A parameter has the wrong type, is out of its range (k) or is missing",
    500: "An internal error (the message holds no details)",
    503: "The service is too busy to process the image in time; retry later",
}
#: the `responses` of every operation in the OpenAPI schema
ERROR_RESPONSES: dict[int | str, dict] = {status: {"model": ErrorBody, "description": why} for status, why in _WHY.items()}


class Redactor:
    """Replaces server folders in messages by their last component."""

    def __init__(self, *folders: str | Path | None) -> None:
        found = {str(p) for f in folders if f is not None for p in (Path(f), Path(f).resolve())}
        self._pairs = sorted(((path, Path(path).name) for path in found), key=lambda pair: -len(pair[0]))

    def __call__(self, message: str) -> str:
        for path, name in self._pairs:
            message = message.replace(path, name)
        return message


def size_text(limit: int) -> str:
    """A byte limit as messages say it: "10 MB", "256 KiB"."""
    return f"{limit / 2**20:g} MB" if limit >= 2**20 else f"{limit / 1024:g} KiB"


def _error(status: int, detail: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: a request body over its path's limit gets a 413 with the error body, as
    soon as the declared length or the bytes read so far pass it."""

    def __init__(self, app, default: int, per_path: dict[str, int]) -> None:
        self.app, self.default, self.per_path = app, default, per_path

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.per_path.get(scope["path"], self.default)
        too_large = f"the request body is larger than {size_text(limit)}"
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            return await _error(413, too_large)(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise HTTPException(413, too_large)
            return message

        await self.app(scope, limited, send)


def _validation_items(exc: RequestValidationError) -> list[dict]:
    """Pydantic's errors reduced to the documented fields (its `ctx` and `input` may hold
    exceptions or the caller's whole input)."""
    return [{"loc": [p if isinstance(p, int) else str(p) for p in e.get("loc", ())], "msg": str(e.get("msg")), "type": str(e.get("type"))} for e in exc.errors()]


def _methods_of(app: FastAPI, scope) -> list[str]:
    """Every method some route serves at the request's path."""
    methods: set[str] = set()
    for route in app.router.routes:
        if route.matches(scope)[0] != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def install_error_handlers(app: FastAPI, redact: Redactor) -> None:
    """Map each failure to its status with the one error body."""

    @app.exception_handler(QueryError)
    async def _bad_query(_: Request, exc: QueryError) -> JSONResponse:
        return _error(400, redact(str(exc)))

    @app.exception_handler(IncompatibleModelError)
    async def _wrong_model(_: Request, exc: IncompatibleModelError) -> JSONResponse:
        return _error(409, redact(str(exc)))

    @app.exception_handler(ImageRejected)
    async def _bad_image(_: Request, exc: ImageRejected) -> JSONResponse:
        return _error(exc.status, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = exc.headers
        if exc.status_code == 405:  # Starlette's Allow names one route's methods; a path may have several
            headers = {**(headers or {}), "Allow": ", ".join(_methods_of(app, request.scope))}
        return _error(exc.status_code, redact(str(exc.detail)), headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        items = _validation_items(exc)
        loc = items[0]["loc"] if items else ["request"]
        where = ".".join(str(p) for p in loc if p not in ("body", "query", "path")) or ".".join(map(str, loc))
        return _error(422, f"{where}: {items[0]['msg']}" if items else "request: invalid", errors=items)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal error")


__all__ = ["BodyLimit", "ERROR_RESPONSES", "ErrorBody", "Redactor", "install_error_handlers", "size_text"]
