"""The HTTP routes of ``prunekit serve``: many tasks on one backbone, one image per request, batched across clients.

::

    GET    /health                      {"status": "ok", "tasks": N, "queued": Q, "batches": B, "answered": A}
    GET    /v1/tasks                    every task: name, classes, class names, cycle, parameters, input size
    GET    /v1/tasks/{name}             one task
    POST   /v1/tasks/{name}/predict     an image (body with Content-Type image/*, or multipart/form-data field
                                        "file"); ?top_k=5 -> {"task", "top": [{"label", "name", "probability"}],
                                        "batch": requests answered by the same forward}
    POST   /v1/tasks                    {"run": PATH, "name": NAME, "cycle": K} add a task    (Authorization:
    DELETE /v1/tasks/{name}             remove a task                                           Bearer TOKEN)

Bad input is a 4xx whose ``detail`` says what was wrong and what is allowed: 400 not an image / a bad run, 401 no
token, 403 a wrong token or task changes switched off, 404 an unknown task (with close names), 409 a taken name or
the last task, 413 a body over ``max_bytes``, 415 another content type, 422 a bad ``top_k``, 503 a full queue. Task
changes need the token given to :func:`create_app` (``prunekit serve`` reads ``PRUNEKIT_SERVE_TOKEN``); without
one, nothing can change what is served.

FastAPI (on Starlette, served by uvicorn) was chosen because it is the maintained, typed default for serving PyTorch
models in Python, validates query parameters itself, and runs the async batching loop (:mod:`.batcher`) in the
server's own event loop; uploads are parsed with the standard library's ``email`` parser, so no multipart package is
needed.
"""
from __future__ import annotations

import asyncio
import hmac
import io
from contextlib import asynccontextmanager
from email.parser import BytesParser
from email.policy import HTTP

from fastapi import Body, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from ..errors import PrunekitError, UnknownNameError
from ..run.predicting import read_image
from ..tasks.model import MultiTaskModel, TaskExistsError
from .batcher import Batcher, QueueFullError

__all__ = ["create_app", "MAX_BYTES"]

MAX_BYTES = 10 * 2 ** 20  # one upload at most (a 4000 x 3000 JPEG is 2-5 MB)


def create_app(model: MultiTaskModel, *, token: str | None = None, max_batch: int = 32, max_wait_ms: float = 5.0,
               queue_size: int = 256, max_bytes: int = MAX_BYTES, backbone: str | None = None) -> FastAPI:
    """The server's routes (module docstring) around ``model``.

    Args:
        model: the tasks served (:func:`~prunekit.load_tasks`).
        token: the bearer token that may add or remove tasks; None: tasks cannot change.
        max_batch, max_wait_ms, queue_size: the batching (:class:`~prunekit.serve.batcher.Batcher`).
        max_bytes: the largest upload accepted.
        backbone: the backbone weights file for added runs, when it is not where their recipes say.
    """
    if max_bytes < 1:
        raise PrunekitError(f"max_bytes: expected at least 1, got {max_bytes}")
    batcher = Batcher(model, max_batch=max_batch, max_wait_ms=max_wait_ms, queue_size=queue_size)
    transforms: dict[str, object] = {}

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="prunekit serve", lifespan=lifespan,
                  description="Many tasks on one frozen backbone: list, predict, add and remove tasks.")
    app.state.batcher, app.state.model = batcher, model

    def describe(name: str) -> dict:
        run = model.runs[name]
        return {"name": name, "classes": run.num_classes, "class_names": run.classes, "cycle": run.cycle,
                "parameters": run.parameters, "source": str(run.source), "img_size": run.backbone.img_size,
                "in_chans": run.backbone.in_chans}

    def known(name: str) -> None:
        try:
            model.task(name)
        except UnknownNameError as e:
            raise HTTPException(404, str(e)) from None

    def authorize(request: Request) -> None:
        if token is None:
            raise HTTPException(403, "task changes are switched off: the server was started without a token "
                                     "(PRUNEKIT_SERVE_TOKEN)")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise HTTPException(401, "task changes need 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise HTTPException(403, "wrong token")

    @app.get("/health")
    async def health():
        return {"status": "ok", "tasks": len(model.tasks), "queued": batcher.queued, "batches": batcher.batches,
                "answered": batcher.answered}

    @app.get("/v1/tasks")
    async def list_tasks():
        return {"tasks": [describe(n) for n in model.tasks]}

    @app.get("/v1/tasks/{name}")
    async def get_task(name: str):
        known(name)
        return describe(name)

    @app.post("/v1/tasks/{name}/predict")
    async def predict(name: str, request: Request, top_k: int = Query(5, ge=1, le=1000)):
        known(name)
        data = await _upload(request, max_bytes)
        if name not in transforms:
            run = model.runs.get(name)
            if run is None:  # removed while the upload was read
                known(name)
            transforms[name] = run.transform()
        try:
            image = await asyncio.to_thread(read_image, io.BytesIO(data), transforms[name], "the upload")
        except PrunekitError as e:
            raise HTTPException(400, str(e)) from None
        try:
            answer = await batcher.submit(name, image, top_k)
        except QueueFullError as e:
            raise HTTPException(503, str(e), headers={"Retry-After": "1"}) from None
        except UnknownNameError as e:
            raise HTTPException(404, str(e)) from None
        return {"task": name, "top": [{"label": k, "name": n, "probability": p} for k, n, p in answer.top],
                "batch": answer.batch}

    @app.post("/v1/tasks", status_code=201)
    async def add_task(request: Request, run: str = Body(..., embed=True), name: str | None = Body(None, embed=True),
                       cycle: int | None = Body(None, embed=True)):
        authorize(request)
        try:
            added = await asyncio.to_thread(model.add_task, run, name, cycle=cycle, backbone=backbone)
        except TaskExistsError as e:
            raise HTTPException(409, str(e)) from None
        except PrunekitError as e:
            raise HTTPException(400, str(e)) from None
        return describe(added)

    @app.delete("/v1/tasks/{name}")
    async def remove_task(name: str, request: Request):
        authorize(request)
        known(name)
        try:
            await asyncio.to_thread(model.remove_task, name)
        except UnknownNameError as e:  # removed by another call meanwhile
            raise HTTPException(404, str(e)) from None
        except PrunekitError as e:
            raise HTTPException(409, str(e)) from None
        transforms.pop(name, None)
        return {"removed": name, "tasks": model.tasks}

    @app.exception_handler(PrunekitError)
    async def prunekit_error(request: Request, e: PrunekitError):  # pragma: no cover - routes map their own
        return JSONResponse({"detail": str(e)}, status_code=400)

    return app


async def _upload(request: Request, max_bytes: int) -> bytes:
    """The image bytes of a request: the body (image/*) or its multipart ``file`` field; 413 / 415 / 400 otherwise."""
    kind = request.headers.get("content-type", "")
    media = kind.split(";")[0].strip().lower()
    if not (media.startswith("image/") or media == "multipart/form-data"):
        raise HTTPException(415, f"Content-Type {kind or '(none)'!r}: send the image as the body with an image/* "
                                 "type (image/png, image/jpeg ...) or as multipart/form-data field 'file'")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise HTTPException(413, f"the upload is {int(length):,} bytes; at most {max_bytes:,} are accepted")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise HTTPException(413, f"the upload is over {max_bytes:,} bytes, the most accepted")
    if media.startswith("image/"):
        if not body:
            raise HTTPException(400, "the body is empty: send the image's bytes")
        return bytes(body)
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + kind.encode("latin-1") + b"\r\n\r\n" + body)
    if not message.is_multipart():
        raise HTTPException(400, "a multipart/form-data body with no parts (is the boundary right?)")
    names = []
    for part in message.iter_parts():
        field = part.get_param("name", header="content-disposition")
        names.append(field)
        if field == "file":
            data = part.get_payload(decode=True)
            if not data:
                raise HTTPException(400, "the 'file' field is empty")
            return data
    raise HTTPException(400, f"multipart/form-data without a 'file' field (fields: {', '.join(map(str, names))})")
