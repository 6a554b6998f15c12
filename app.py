"""Finetune Lab: a Gradio app to chat with, fine-tune and explore small language models.

    python app.py                                   # http://127.0.0.1:7860
    python app.py --share                           # public link: chat open, training/publishing locked
    FINETUNE_LAB_ADMIN_KEY=... python app.py --share    # the key unlocks them per browser session
    python app.py --auth user:password              # or put the whole app behind a login

The page is served before any model loads; models load lazily on first use (the libraries
they need are imported once before serving: two request threads importing transformers at
once see it half-built), except that where chat gets a compiled decode step (by default on a
CPU with native bf16) the default model and its step start loading as the UI is built
(core.inference.prepare.at_app_start). On a Hugging Face Space this file runs as is (the Space owner's
Hugging Face login unlocks training/publishing). A non-loopback --host without --auth is
public too (see core/access.py for what that means).

Every event goes through the queue (the REST route /gradio_api/run/... is closed), where one
session and one client address may each hold only a few events at once; a request body over
1 MB is refused before Gradio parses it, and uploads stop while Gradio's upload folder holds
over 2 GB (core/request_limits.py). A public app's stderr passes at most 30,000 characters a
minute (core/log_budget.py), so a visitor's calls cannot fill its log. The same server answers
OpenAI clients at /v1 (serve/openai_api.py: the same models, access rules and caps; FINETUNE_LAB_API_KEY to require a key).
"""
import argparse
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from core import access, log_budget  # noqa: E402
from core.errors import LabError  # noqa: E402
from core.inference import prepare  # noqa: E402
from core.paths import data_dir  # noqa: E402
from core.ports import check_free, port_number  # noqa: E402
from core.settings import declare_public, declare_serving, settings  # noqa: E402
from core.request_limits import (MAX_BODY_BYTES, SHARED_POOLS, BodyLimit, UploadCacheLimit,  # noqa: E402
                                 client_address, fair_order)
from serve.openai_server import router as openai_router  # noqa: E402
from tabs import chat_tab, hub_panel, publish, topics, train  # noqa: E402

MAX_UPLOAD = "50mb"
POOL_EVENTS_PER_ADDRESS = 2  # in each shared pool (chat answers, heavy work): see core/request_limits.py
QUEUE_SIZE = 128
UPLOAD_CACHE = (600, 3600)  # every 10 minutes, Gradio deletes uploads older than an hour


def build_app() -> gr.Blocks:
    """The whole app as one gr.Blocks; each tab lays itself out and wires its own events."""
    with gr.Blocks(title="Finetune Lab", delete_cache=UPLOAD_CACHE) as demo:
        gr.Markdown("# Finetune Lab\nChat with, fine-tune and explore small language models.")
        if access.is_public():
            _access_row(demo)
        with gr.Tab("Chat"):
            adapter_picker = chat_tab.build(demo)
        with gr.Tab("Train"):
            train.build(demo, adapter_picker)
        with gr.Tab("Embeddings & topics"):
            topics.build()
        with gr.Tab("Publish"):
            publish.build(demo)
        hub_panel.register_api()
    # Work is CPU-bound: 2 events at once per listener by default (chat answers get 4, which
    # decode as one batch: core.request_limits.GENERATE_EVENTS).
    # api_open=False: /gradio_api/run/... would run handlers beside the queue and its limits.
    demo.queue(default_concurrency_limit=2, max_size=QUEUE_SIZE, api_open=False)
    limit_events(demo, settings().events_per_session, settings().events_per_address)
    return demo


def limit_events(demo: gr.Blocks, per_session: int, per_address: int) -> None:
    """Refuse a new event while its session has `per_session`, or its client address
    `per_address` (or POOL_EVENTS_PER_ADDRESS in the same shared pool), queued or running, so
    one visitor (or one script calling every fn_index from fresh session ids) can neither fill
    the shared queue nor line up long jobs ahead of everyone; in the shared pools, the waiting
    events are served round robin by address (core.request_limits.fair_order). Gradio has no
    such setting, so this wraps its queue's `push`."""
    queue = demo._queue
    push = queue.push

    async def push_limited(body, request, username):
        session, address = body.session_hash, client_address(request)
        pool = getattr(demo.fns.get(body.fn_index), "concurrency_id", None)
        waiting = [e for q in queue.event_queue_per_concurrency_id.values() for e in q.queue]
        events = waiting + [e for job in queue.active_jobs if job for e in job]
        if session and sum(e.session_hash == session for e in events) >= per_session:
            return refuse(f"Too many requests at once from this session (at most {per_session}): wait for them.")
        mine = [e for e in events if address and client_address(e.request) == address]
        if len(mine) >= per_address:
            return refuse(f"Too many requests at once from your address (at most {per_address}): wait for them.")
        if pool in SHARED_POOLS and sum(e.concurrency_id == pool for e in mine) >= POOL_EVENTS_PER_ADDRESS:
            return refuse("Wait for your answer before asking again (at most "
                          f"{POOL_EVENTS_PER_ADDRESS} at once from your address).")
        result = await push(body, request, username)
        if result[0] and pool in SHARED_POOLS:  # synchronous: the queue's worker runs on this loop
            waiting = queue.event_queue_per_concurrency_id[pool].queue
            running = [e for job in queue.active_jobs if job for e in job if e.concurrency_id == pool]
            waiting[:] = fair_order(waiting, running, key=lambda e: client_address(e.request))
        return result

    def refuse(message: str):
        print(f"[queue] refused: {message}", file=sys.stderr, flush=True)  # no session id or address logged
        return False, message, "queue_full"

    queue.push = push_limited


def _access_row(demo: gr.Blocks) -> None:
    with gr.Row():
        gr.Markdown("This app is public: chat is open; training, deleting runs and publishing need a login.")
        if access.real_space_oauth():  # elsewhere Gradio would sign everyone in as this machine's Hub user
            gr.LoginButton()
        key = gr.Textbox(label="Admin key", type="password", scale=1, elem_id="admin-key")
        state = gr.Markdown(elem_id="admin-state")
        key.submit(_unlock, key, state, api_name="unlock")


def _unlock(key: str, request: gr.Request) -> str:
    return access.unlock(key, request)


def import_libraries() -> None:
    """Import, once and in this thread, what request threads would otherwise import lazily at the
    same moment: datasets' pickler looks up transformers.PreTrainedTokenizerBase while the first
    chat's model load may still be importing transformers in another thread."""
    import datasets  # noqa: F401
    import transformers

    transformers.PreTrainedTokenizerBase, transformers.AutoModelForCausalLM  # noqa: B018 (resolve the lazy names)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=port_number, default=os.environ.get("GRADIO_SERVER_PORT", "7860"))
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    parser.add_argument("--auth", default=settings().auth or None,
                        help="USER:PASSWORD login for the whole app (or $FINETUNE_LAB_AUTH)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        check_free(args.host, args.port)  # now, not after the model has loaded (Gradio binds last)
        data_dir()
    except LabError as exc:
        sys.exit(f"error: {exc}")
    # Reachable by others with no login in front: public, without writing the environment.
    declare_public(args.share or (not args.auth and not access.is_loopback(args.host)))
    if access.is_public():  # before the server's log handlers take sys.stderr: all it prints has a budget
        log_budget.install()
    declare_serving()  # chat models here get the compiled decode step (core.inference.compiled_decode.wanted)
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    import_libraries()
    prepare.at_app_start()  # the default chat model and its decode step load while the UI builds
    # run_history=False: Gradio would otherwise keep every call's inputs (the HF token too) in the browser.
    demo = build_app()
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, auth=auth,
                max_file_size=MAX_UPLOAD, run_history=False, footer_links=["api", "gradio"], prevent_thread_lock=True,
                app_kwargs={"middleware": [Middleware(BodyLimit, limit=MAX_BODY_BYTES),
                                           Middleware(UploadCacheLimit, folder=upload_folder())]})
    # The OpenAI-compatible endpoint on the same server (Gradio's --auth does not guard it: a key does).
    demo.app.include_router(openai_router(login_required=auth is not None))
    demo.block_thread()


def upload_folder() -> str:
    from gradio.utils import get_upload_folder

    return get_upload_folder()


if __name__ == "__main__":
    main()
