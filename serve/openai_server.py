"""The OpenAI-compatible routes (serve.openai_api) as a FastAPI router: added to the app's own
server by app.py, or served alone by `python cli.py serve`.

    python cli.py serve --host 127.0.0.1 --port 8000
    curl http://127.0.0.1:8000/v1/models
"""
from __future__ import annotations

import json

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware

from core.errors import LabError
from core.request_limits import MAX_BODY_BYTES, BodyLimit
from serve.openai_api import SLOTS, chunks, completion_body, replies
from serve.openai_request import ApiError, caller, models_body, parse_request


def router(login_required: bool = False) -> APIRouter:
    """/v1/models and /v1/chat/completions; `login_required`: the app is behind --auth."""
    routes = APIRouter(prefix="/v1")

    @routes.get("/models")
    async def list_models(request: Request):
        try:
            caller(request, login_required)
        except ApiError as exc:
            return JSONResponse(exc.body(), exc.status)
        return await run_in_threadpool(models_body)  # reads the runs' manifests

    @routes.post("/chat/completions")
    async def chat_completions(request: Request):
        try:
            return await answer(request, login_required)
        except ApiError as exc:
            return JSONResponse(exc.body(), exc.status)

    return routes


async def answer(request: Request, login_required: bool):
    """One chat completion; the body was bounded by BodyLimit (the app's, or standalone's) as it arrived."""
    who = caller(request, login_required)
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise ApiError(400, "The request body is not JSON.") from None
    chat = await run_in_threadpool(parse_request, body, who)  # reads the runs
    await run_in_threadpool(SLOTS.take, who.address)  # may wait for a running generation to end
    try:
        stream = await run_in_threadpool(replies, chat)
    except LabError as exc:
        SLOTS.give(who.address)
        raise ApiError(400, str(exc)) from None
    if chat.stream:
        return StreamingResponse(Held(chunks(stream, chat), who.address), media_type="text/event-stream")
    try:
        return await run_in_threadpool(completion_body, stream, chat)
    except LabError as exc:
        raise ApiError(400, str(exc)) from None
    finally:
        SLOTS.give(who.address)


class Held:
    """The event stream, giving the slot back once however it ends: done, failed, or dropped by
    a client that left (even before the first event, when a generator's `finally` never runs)."""

    def __init__(self, events, address: str):
        self.events, self.address, self.given = events, address, False

    def __iter__(self):
        return self

    def __next__(self) -> str:
        try:
            return next(self.events)
        except BaseException:
            self.give()
            raise

    def give(self) -> None:
        if not self.given:
            self.given = True
            self.events.close()  # stops the generation thread (stream_reply's finally)
            SLOTS.give(self.address)

    def __del__(self):
        self.give()


def standalone() -> FastAPI:
    """The endpoint alone, for `cli.py serve`."""
    app = FastAPI(title="Finetune Lab OpenAI-compatible endpoint", docs_url=None, redoc_url=None,
                  middleware=[Middleware(BodyLimit, limit=MAX_BODY_BYTES)])
    app.include_router(router())
    return app
