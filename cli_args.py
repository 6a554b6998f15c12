"""The command line's subcommands and their flags, for cli.py (which runs them).

    python cli.py --help              # the subcommands
    python cli.py export --help       # one subcommand's flags

Only argparse (and core.ports, for the port flag) is imported here, so `--help` is instant.
`writable` checks an `--out` before a command's work.
"""
from __future__ import annotations

import argparse

from core.errors import LabError
from core.ports import port_number


def build_parser() -> argparse.ArgumentParser:
    """The CLI's parser: one subcommand per action, each added by its own function below."""
    parser = argparse.ArgumentParser(prog="cli.py", description="Finetune Lab command line.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_chat(sub)
    sub.add_parser("train", help="train a run: same flags as python -m training.run", add_help=False)
    _add_runs(sub)
    _add_topics(sub)
    _add_embed(sub)
    _add_publish(sub)
    _add_votes(sub)
    _add_eval(sub)
    _add_effect(sub)
    _add_export(sub)
    _add_hub(sub)
    _add_serve(sub)
    return parser


def at_least(low, kind=int):
    """argparse type: a number of `kind` no smaller than `low`, or a one-line usage error."""
    def number(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value >= low:  # also refuses nan
            raise argparse.ArgumentTypeError(f"{text!r}: use {low} or more")
        return value
    return number


def _add_runs(sub) -> None:
    runs = sub.add_parser("runs", help="list training runs; compare, stop or delete them")
    action = runs.add_mutually_exclusive_group()
    action.add_argument("--compare", nargs="+", metavar="RUN", help="2-4 runs: the settings that differ and their figures")
    action.add_argument("--stop", nargs="?", const="", metavar="RUN",
                        help="save a checkpoint and stop RUN (default: the running job)")
    action.add_argument("--delete", metavar="RUN", help="delete a run folder (with --yes)")
    runs.add_argument("--yes", action="store_true", help="confirm --delete")


def _add_chat(sub) -> None:
    chat = sub.add_parser("chat", help="stream a reply from a model (and its adapter); without a prompt, a "
                          "conversation on stdin")
    chat.add_argument("prompt", nargs="?", help="one message to answer (none: read a conversation, a message a line)")
    chat.add_argument("--model", default="smollm2-135m-instruct", help="known name, Hub id or folder")
    chat.add_argument("--adapter", help="a run name, a LoRA adapter or fully fine-tuned model folder, or a Hub repo id")
    chat.add_argument("--compare", action="store_true", help="answer with base and tuned")
    chat.add_argument("--temperature", type=at_least(0.0, float), default=0.0, help="0: greedy")
    chat.add_argument("--seed", type=int, help="with a temperature above 0: the same seed, the same answer")
    chat.add_argument("--max-new-tokens", type=at_least(1), default=256)
    chat.add_argument("--system", help="system prompt")


def _add_topics(sub) -> None:
    topics = sub.add_parser("topics", help="fit BERTopic on a corpus; write the table and figures")
    _add_corpus(topics)
    topics.add_argument("--method", choices=("fast", "umap"), default="fast")
    topics.add_argument("--topics", type=at_least(2), default=20, help="number of topics (fast method)")
    topics.add_argument("--out", default="topics-out", help="folder for topics.csv and the HTML figures")


def _add_embed(sub) -> None:
    embed = sub.add_parser("embed", help="embed a corpus; cluster it and score the clusters against its labels, "
                           "or classify it on its labels")
    _add_corpus(embed)
    embed.add_argument("--cluster", choices=("kmeans", "hdbscan"), help="cluster the documents")
    embed.add_argument("--clusters", type=at_least(2), default=8, help="how many (kmeans)")
    embed.add_argument("--min-size", type=at_least(2), default=10, help="smallest cluster (hdbscan)")
    embed.add_argument("--classify", choices=("logreg", "knn"), help="train and score a classifier on the labels")
    embed.add_argument("--out", help="with --cluster: write clusters.csv (cluster, label, text) into this folder")


def _add_corpus(parser) -> None:
    """The corpus flags topics and embed share, as the Embeddings tab's first widgets."""
    parser.add_argument("--corpus", default="guardian-headlines",
                        help="a bundled corpus (guardian-headlines, debates-2016, chatterbot) or a csv/jsonl/txt file")
    parser.add_argument("--text-column", default="", help="a file's text column (default: 'text', else its first); "
                        "a bundled corpus has its own")
    parser.add_argument("--label-column", default="", help="the column of categories, to classify or to score "
                        "clusters against")
    parser.add_argument("--max-docs", type=at_least(1), default=5000, help="documents to use (a seeded sample)")
    parser.add_argument("--embedder", default="all-MiniLM-L6-v2", help="the packaged MiniLM, a Hub id, a folder "
                        "or a tuned embedder run")


def _add_publish(sub) -> None:
    publish = sub.add_parser("publish", help="push a run's adapter (and a compare Space); token from HF_TOKEN")
    publish.add_argument("--run", required=True, help="run folder name (see: cli.py runs)")
    publish.add_argument("--repo", required=True, help="model repo, OWNER/NAME")
    publish.add_argument("--space", help="also create or update this Space, OWNER/NAME")
    publish.add_argument("--votes-repo", help="the Space's private votes dataset, OWNER/NAME (default: the Space's "
                         "name + '-votes'; 'none': the Space keeps no votes)")
    publish.add_argument("--private", action="store_true")
    publish.add_argument("--what", default="adapter",
                         help="adapter (default), merged, or gguf-<quant> such as gguf-q8_0 (exported first if needed)")


def _add_votes(sub) -> None:
    votes = sub.add_parser("votes", help="the votes: export as DPO pairs or as rated answers (KTO), leaderboard, "
                           "pull a Space's votes from the Hub, accept those waiting for review")
    votes.add_argument("action", choices=("export", "thumbs", "table", "pull", "accept"))
    votes.add_argument("dataset", nargs="?", help="pull: the Space's votes dataset, OWNER/NAME")
    votes.add_argument("--token", help="pull: a Hugging Face token for a private dataset (default: HF_TOKEN)")
    votes.add_argument("--out", help="export, thumbs: the jsonl file to write (default preferences.jsonl, "
                       "thumbs.jsonl)")


def _add_eval(sub) -> None:
    evaluate = sub.add_parser("eval", help="score a finished run's held-out answers (base vs tuned) again")
    evaluate.add_argument("--run", required=True, help="run folder name (see: cli.py runs)")
    evaluate.add_argument("--rows", type=at_least(0), default=0, help="held-out rows to score (default: the run's eval_rows, "
                          "or 16 when that was 0)")


def _add_effect(sub) -> None:
    effect = sub.add_parser("effect", help="where tuning helped or hurt: held-out losses, base vs tuned, by topic")
    effect.add_argument("--run", required=True, help="a finished SFT or DAPT run (see: cli.py runs)")
    effect.add_argument("--embedder", help="the embedder that groups the rows (default: the packaged MiniLM; or a "
                        "tuned embedder's run name)")


def _add_export(sub) -> None:
    export = sub.add_parser("export", help="merge a run's adapter into its base; or write GGUF + Modelfile")
    export.add_argument("--run", required=True, help="run folder name (see: cli.py runs)")
    export.add_argument("--format", choices=("merged", "gguf"), default="merged",
                        help="merged: a plain safetensors model folder; gguf: one file for llama.cpp/Ollama")
    export.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16", help="merged weights")
    export.add_argument("--quant", choices=("f16", "bf16", "q8_0", "q4_0"), default="q8_0",
                        help="GGUF tensor type of the 2-D weights (norms stay f32)")
    export.add_argument("--check", action="store_true", help="gguf: then compare its greedy answers and chat "
                        "template with the adapter's and the merged model's (writes parity.json)")


def _add_hub(sub) -> None:
    hub = sub.add_parser("hub", help="search the Hub for models or datasets by task (a dataset id trains as is)")
    hub.add_argument("kind", choices=("models", "datasets"))
    hub.add_argument("--task", default="", help="models: a pipeline tag (default text-generation); datasets: a "
                     "task category such as question-answering (default: any)")
    hub.add_argument("--query", default="", help="name contains")
    hub.add_argument("--library", default="transformers", help="models: transformers, sentence-transformers, peft")
    hub.add_argument("--max-params", type=at_least(0.0, float), default=1000,
                     help="models: at most this many million parameters (0: any size)")
    hub.add_argument("--sort", choices=("downloads", "likes", "last_modified"), default="downloads")
    hub.add_argument("--limit", type=at_least(1), default=20)


def _add_serve(sub) -> None:
    serve = sub.add_parser("serve", help="the OpenAI-compatible endpoint (/v1/models, /v1/chat/completions) alone")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=port_number, default=8000)
    serve.add_argument("--print-vllm", metavar="RUN", help="print the vLLM command that serves RUN's adapter instead")


def writable(out, folder: bool = False):
    """`--out` (a folder, or a file) tried for writing now, its folder created, so a typo is one
    line before the work, not a traceback after it."""
    import tempfile

    try:
        (out if folder else out.parent).mkdir(parents=True, exist_ok=True)
        if folder:
            tempfile.TemporaryFile(dir=out).close()
        else:
            existed = out.exists()
            open(out, "a").close()
            if not existed:
                out.unlink()
    except OSError as exc:
        raise LabError(f"--out {out}: cannot write there ({exc.strerror}).") from None
    return out
