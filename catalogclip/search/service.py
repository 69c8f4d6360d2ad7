"""The search service: a FastAPI app over a `SearchEngine`, and the web page at ``/``.

Every bad input gets a 4xx with a one-line ``{"detail": message}``: an empty or overlong
query (400), unknown filter fields (400), a non-image upload (415), an oversized upload (413),
an index built by another model (409), an unknown product (404).
"""
from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from catalogclip.search.engine import MAX_K, SearchEngine, SearchResult
from catalogclip.search.index import IncompatibleModelError
from catalogclip.search.query import QueryError

WEB_DIR = Path(__file__).parent / "web"
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000


class SearchBody(BaseModel):
    q: str
    k: int = 10
    filters: dict[str, Any] | None = None


def _filters(raw: str | None) -> dict | None:
    """The `filters` query/form parameter: a JSON object."""
    if raw is None or not raw.strip():
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise QueryError(f"filters is not valid JSON: {exc.msg} at character {exc.pos}") from None


def _product_json(product, score: float | None = None, image: int = 0) -> dict:
    base = f"/products/{product.id}/images"
    out = {
        **product.to_json(),
        "image_urls": [f"{base}/{n}" for n in range(len(product.images))],
        "image_url": f"{base}/{image}",
    }
    if score is not None:
        out["score"] = round(score, 6)
    return out


def _result_json(result: SearchResult) -> dict:
    body = result.to_json()
    body["results"] = [_product_json(h.product, h.score, h.image) for h in result.hits]
    return body


def _decode_upload(data: bytes) -> Image.Image:
    too_many = HTTPException(413, f"the image has more than {MAX_IMAGE_PIXELS} pixels")
    try:
        image = Image.open(BytesIO(data))  # reads the header only
    except Image.DecompressionBombError:
        raise too_many from None
    except UnidentifiedImageError:
        raise HTTPException(415, "the upload is not an image (PNG, JPEG, WebP, GIF, BMP ...)") from None
    if image.width * image.height > MAX_IMAGE_PIXELS:
        raise too_many
    try:
        image.load()
    except (OSError, ValueError, SyntaxError) as exc:
        raise HTTPException(415, f"the image cannot be decoded: {exc}") from None
    return image.convert("RGB")


async def _read_limited(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes."""
    too_large = HTTPException(413, f"the upload is larger than {limit // (1024 * 1024)} MB")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


async def _upload_form(request: Request, limit: int) -> tuple[bytes, dict[str, str]]:
    """(file bytes, other fields) of a multipart upload with one file field named `file`."""
    body = await _read_limited(request, limit)

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=8)
    except Exception as exc:  # starlette raises its own MultiPartException / HTTPException types
        raise HTTPException(400, f"cannot read the multipart form: {getattr(exc, 'detail', exc)}") from None
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise HTTPException(400, "the form has no file field named 'file'")
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    return await upload.read(), fields


def _k(raw: str | None) -> int:
    try:
        return int(raw) if raw not in (None, "") else 10
    except ValueError:
        raise QueryError(f"k must be an integer, got {raw!r}") from None


def create_app(engine: SearchEngine, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> FastAPI:
    index = engine.index
    app = FastAPI(
        title="catalogclip search",
        description="Cross-modal product search: text, image and category queries with attribute filters.",
        version="1",
    )

    @app.exception_handler(QueryError)
    async def _bad_query(_: Request, exc: QueryError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(IncompatibleModelError)
    async def _wrong_model(_: Request, exc: IncompatibleModelError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        return JSONResponse({"detail": f"{where}: {first.get('msg')}", "errors": _jsonable(exc.errors())}, status_code=422)

    def product_or_404(product_id: str):
        try:
            return index.product(product_id)
        except KeyError as exc:
            raise HTTPException(404, exc.args[0]) from None

    @app.get("/healthz")
    def healthz() -> dict:
        return {
            "status": "ok" if engine.incompatible is None else "incompatible model",
            "products": len(index),
            "model_id": index.model_id,
            "encoder_model_id": engine.encoder.model_id,
            "kind": index.kind,
            "detail": engine.incompatible,
        }

    @app.get("/search")
    def search_get(q: str = "", k: int = Query(10, ge=1, le=MAX_K), filters: str | None = None) -> dict:
        return _result_json(engine.search_text(q, k, _filters(filters)))

    @app.post("/search")
    def search_post(body: SearchBody) -> dict:
        return _result_json(engine.search_text(body.q, body.k, body.filters))

    @app.post(
        "/search/image",
        openapi_extra={
            "requestBody": {
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file"],
                            "properties": {
                                "file": {"type": "string", "format": "binary"},
                                "k": {"type": "integer", "default": 10},
                                "filters": {"type": "string", "description": "JSON object of filters"},
                            },
                        }
                    }
                },
                "required": True,
            }
        },
    )
    async def search_image(request: Request) -> dict:
        data, fields = await _upload_form(request, max_upload_bytes)
        image = _decode_upload(data)
        k, filters = _k(fields.get("k")), _filters(fields.get("filters"))
        # the model runs in a worker thread so the event loop keeps serving
        return _result_json(await run_in_threadpool(engine.search_image, image, k, filters))

    @app.get("/category")
    def category(path: str | None = None, k: int = Query(10, ge=1, le=MAX_K), filters: str | None = None, within: bool = True) -> dict:
        """The category tree; with `path`, also the products for that category query."""
        body: dict = {"tree": index.category_tree()}
        if path is not None:
            body.update(_result_json(engine.search_category(path, k, _filters(filters), within)))
        return body

    @app.get("/facets")
    def facets() -> dict:
        return {"facets": index.facets()}

    @app.get("/products/{product_id}")
    def product(product_id: str) -> dict:
        return _product_json(product_or_404(product_id))

    @app.get("/products/{product_id}/similar")
    def similar(product_id: str, k: int = Query(10, ge=1, le=MAX_K), filters: str | None = None) -> dict:
        product_or_404(product_id)
        return _result_json(engine.similar(product_id, k, _filters(filters)))

    @app.get("/products/{product_id}/images/{number}")
    def product_image(product_id: str, number: int) -> FileResponse:
        found = product_or_404(product_id)
        try:
            path = index.image_file(found, number)
        except KeyError as exc:
            raise HTTPException(404, exc.args[0]) from None
        if not path.is_file():
            raise HTTPException(404, f"image {number} of product '{product_id}' is missing from the catalog folder")
        return FileResponse(path)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app


def _jsonable(errors: list[dict]) -> list[dict]:
    """Validation errors without the non-JSON bits pydantic may attach (exceptions in `ctx`)."""
    return [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in errors]


def serve(engine: SearchEngine, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the service until interrupted."""
    import faiss
    import uvicorn

    # a request searches one query: FAISS threads would only contend; concurrency comes from requests
    faiss.omp_set_num_threads(1)
    uvicorn.run(create_app(engine), host=host, port=port, log_level="info")


__all__ = ["MAX_UPLOAD_BYTES", "create_app", "serve"]
