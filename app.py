"""Finetune Lab: a Gradio app to chat with, fine-tune and explore small language models.

    python app.py                       # http://127.0.0.1:7860
    python app.py --share --auth admin:secret   # public link; training/publishing need login

The page is served before any model loads; models load lazily on first use. On a Hugging Face
Space this file runs as is.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from tabs import chat, topics, train  # noqa: E402


def build_app() -> gr.Blocks:
    """The whole app as one gr.Blocks, with each tab laid out by its module."""
    with gr.Blocks(title="Finetune Lab") as demo:
        gr.Markdown("# Finetune Lab\nChat with, fine-tune and explore small language models.")
        with gr.Tab("Chat"):
            adapter_picker = chat.build()
        with gr.Tab("Train"):
            run, data_outputs, dataset, columns, runs = train.build(adapter_picker)
        with gr.Tab("Embeddings & topics"):
            topics.build()
        demo.load(chat.refresh_adapters, None, adapter_picker, api_name=False)
        # A (re)loaded page re-attaches to the live job, or shows the newest run.
        demo.load(train.attach_latest, None, run, api_name=False)
        demo.load(train._on_dataset, [dataset, columns], data_outputs, api_name=False)
        demo.load(train.runs_table, None, runs, api_name=False)
    # Generation is CPU-bound: more than 2 concurrent streams only slows every one of them.
    demo.queue(default_concurrency_limit=2, max_size=64)
    return demo


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    parser.add_argument("--auth", default=os.environ.get("FINETUNE_LAB_AUTH"),
                        help="USER:PASSWORD required to log in (or $FINETUNE_LAB_AUTH)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    build_app().launch(server_name=args.host, server_port=args.port, share=args.share,
                       auth=auth, max_file_size="50mb")


if __name__ == "__main__":
    main()
