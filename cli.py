"""Finetune Lab from the command line: the same functions the UI calls.

    python cli.py chat "What is the capital of France?"
    python cli.py chat --adapter RUN/adapter --compare "Who are you?"
    python cli.py train --config training/recipes/sft_lora.yaml [--max_steps 20 ...]
    python cli.py runs
    python cli.py topics --corpus guardian-headlines [--method fast|umap] [--out DIR]
    HF_TOKEN=... python cli.py publish --run RUN --repo USER/NAME [--space USER/SPACE] [--private]
    python cli.py export --run RUN --format merged [--dtype bf16|fp16|fp32]
    python cli.py export --run RUN --format gguf [--quant f16|bf16|q8_0|q4_0]
    HF_TOKEN=... python cli.py publish --run RUN --repo USER/NAME --what merged|gguf-q8_0
    python cli.py votes export --out prefs.jsonl    # Compare votes as DPO pairs
    python cli.py votes thumbs --out thumbs.jsonl   # every rated answer, for KTO
    python cli.py votes table | accept              # leaderboard, win/loss/tie per adapter; accept votes
    python cli.py votes pull OWNER/DATASET          # the votes a published Space collected, for review
    python cli.py eval --run RUN                    # held-out answers of base vs tuned: EM, ROUGE-L, cosine
    python cli.py effect --run RUN                  # where tuning helped or hurt, by topic of the held-out rows
    python cli.py hub models --task text-generation --max-params 500   # or: hub datasets --task question-answering
    python cli.py serve [--host 127.0.0.1] [--port 8000]   # the OpenAI-compatible endpoint alone, at /v1
    python cli.py serve --print-vllm RUN                   # the same run served by vLLM, for GPUs and real traffic

Heavy libraries are imported inside each command, so `--help` is instant.
"""
from __future__ import annotations

import argparse
import sys

from core.errors import LabError


def cmd_chat(args) -> int:
    from core.inference.adapters import attach_tuned
    from core.inference.chat import GenerationSettings, stream_reply
    from core.inference.compare import stream_compare
    from core.inference.models import load_model

    settings = GenerationSettings(temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                                  system_prompt=args.system or "")
    messages = [{"role": "user", "content": args.prompt}]
    base = load_model(args.model)
    tuned = attach_tuned(base, args.adapter) if args.adapter else None
    if tuned and args.compare:  # both answers come from one batch: print them once done
        *_, replies = stream_compare(base, tuned, messages, messages, settings)
        for label, reply in zip(("base", "tuned"), replies):
            print(f"--- {label} ---\n{reply.text}")
            print(f"[{reply.stats}]" + (f" [{reply.notice}]" if reply.notice else ""), file=sys.stderr)
        return 0
    model, adapter = (tuned.loaded, tuned.adapter_name) if tuned else (base, None)
    shown = 0
    for reply in stream_reply(model, messages, settings, adapter):
        print(reply.text[shown:], end="", flush=True)
        shown = len(reply.text)
    print(f"\n[{reply.stats}]" + (f" [{reply.notice}]" if reply.notice else ""), file=sys.stderr)
    return 0


def cmd_train(rest: list[str]) -> int:
    from training.run import main

    return main(rest)


def cmd_runs(args) -> int:
    from training.jobs import list_runs

    for run in list_runs():
        headline = run.manifest.headline() if run.manifest else None
        print(f"{run.name:40} {run.state:10} step {run.step}/{run.max_steps}  {headline.line() if headline else ''}")
    return 0


def cmd_topics(args) -> int:
    from pathlib import Path

    from core.explore.corpora import load_corpus
    from core.explore.embeddings import embed, load_embedder
    from core.explore.topics import export, fit_topics

    corpus = load_corpus(args.corpus, args.text_column, args.label_column, args.max_docs)
    vectors = embed(corpus.texts, args.embedder)
    result = fit_topics(corpus.texts, vectors, args.method, args.topics, embedder=load_embedder(args.embedder))
    for path in export(result, Path(args.out)):
        print(path)
    print(result.table()[["Topic", "Count", "Representation"]].head(12).to_string(index=False))
    return 0


def cmd_publish(args) -> int:
    from core.hub.publish import push_adapter
    from core.hub.space import push_space
    from training.export_formats import ensure_export

    def progress(fraction, desc=""):
        print(f"[{fraction:4.0%}] {desc}", file=sys.stderr)

    ensure_export(args.run, args.what, progress)
    print(push_adapter(args.run, args.repo, None, args.private, progress, what=args.what))
    if args.space:
        votes_repo = "" if args.votes_repo == "none" else args.votes_repo
        print(push_space(args.run, args.space, args.repo, None, args.private, progress, votes_repo))
    return 0


def cmd_eval(args) -> int:
    from training.answer_eval import evaluate_run, table_markdown

    print(table_markdown(evaluate_run(args.run, rows=args.rows)))
    return 0


def cmd_effect(args) -> int:
    from training.effect import main

    return main(["--run", args.run, "--embedder", args.embedder or ""])


def cmd_export(args) -> int:
    from training.export_formats import export_run

    def progress(fraction, desc=""):
        print(f"[{fraction:4.0%}] {desc}", file=sys.stderr)

    print(export_run(args.run, args.format, args.dtype, args.quant, progress).describe())
    if args.check and args.format == "gguf":
        from training.export_parity import check_parity, side_by_side

        result = check_parity(args.run, args.quant, lambda text: print(text, file=sys.stderr))
        print(result["verdict"], side_by_side(result), sep="\n")
    return 0


def cmd_votes(args) -> int:
    from pathlib import Path

    from core.feedback import votes

    args.out = args.out or ("thumbs.jsonl" if args.action == "thumbs" else "preferences.jsonl")
    if args.action == "export":
        print(f"{votes.export_preferences(Path(args.out))} preference pair(s) written to {args.out}")
    elif args.action == "thumbs":
        print(f"{votes.export_rated(Path(args.out))} rated answer(s) written to {args.out}")
    elif args.action == "pull":
        from core.hub.votes_pull import pull_votes

        if not args.dataset:
            raise LabError("votes pull needs the dataset: python cli.py votes pull OWNER/NAME")
        print(pull_votes(args.dataset, args.token).line() + " Accept them: python cli.py votes accept")
    elif args.action == "accept":
        print(f"{votes.accept_waiting()} vote(s) waiting for review moved into your store")
    else:
        from core.feedback.leaderboard import leaderboard_lines, win_table

        print("\n".join(leaderboard_lines(votes.read())) or "No blind A/B votes yet.")
        for row in win_table(votes.read()) or []:
            low, high = row["interval_95"]
            print(f"{row['adapter']} vs {row['model']}: {row['wins']}-{row['losses']}-{row['ties']} "
                  f"(win-loss-tie), {row['both_bad']} both bad, win share {row['win_share']} "
                  f"[95%: {low}-{high}]")
        from core.feedback.judge import judged_runs, win_rate_line
        from core.runs import RunFolder

        for name in judged_runs():
            print(f"{name}: {win_rate_line(RunFolder.named(name)) or 'not judged yet'}")
    return 0


def cmd_hub(args) -> int:
    from core.hub.search import COLUMNS, search_datasets, search_models

    if args.kind == "models":
        found = search_models(args.task or "text-generation", args.query, args.library,
                              args.max_params * 1e6, args.sort, args.limit)
    else:
        found = search_datasets(args.task, args.query, args.sort, args.limit)
    print("\t".join(COLUMNS))
    for result in found:
        print("\t".join(str(cell) for cell in result.row()))
    return 0


def cmd_serve(args) -> int:
    if args.print_vllm:
        from serve.openai_api import vllm_command

        print(vllm_command(args.print_vllm))
        return 0
    import uvicorn

    from core import access
    from core.settings import declare_public, settings
    from serve.openai_server import standalone

    # Reachable by others with no key: visitors' rules, as app.py does for its own host.
    declare_public(not access.is_loopback(args.host) and not settings().api_key)
    print(f"OpenAI-compatible endpoint: http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(standalone(), host=args.host, port=args.port, log_level="warning")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cli.py", description="Finetune Lab command line.")
    sub = parser.add_subparsers(dest="command", required=True)
    chat = sub.add_parser("chat", help="stream a reply from a model (and its adapter)")
    chat.add_argument("prompt")
    chat.add_argument("--model", default="smollm2-135m-instruct", help="known name, Hub id or folder")
    chat.add_argument("--adapter", help="a run name, a LoRA adapter or fully fine-tuned model folder, or a Hub repo id")
    chat.add_argument("--compare", action="store_true", help="answer with base and tuned")
    chat.add_argument("--temperature", type=float, default=0.0)
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--system", help="system prompt")
    sub.add_parser("train", help="train a run: same flags as python -m training.run", add_help=False)
    sub.add_parser("runs", help="list training runs")
    topics = sub.add_parser("topics", help="fit BERTopic on a corpus; write the table and figures")
    topics.add_argument("--corpus", default="guardian-headlines", help="bundled corpus or csv/jsonl/txt file")
    topics.add_argument("--method", choices=("fast", "umap"), default="fast")
    topics.add_argument("--topics", type=int, default=20, help="number of topics (fast method)")
    topics.add_argument("--out", default="topics-out", help="folder for topics.csv and the HTML figures")
    topics.add_argument("--text-column", default="")
    topics.add_argument("--label-column", default="")
    topics.add_argument("--max-docs", type=int, default=5000)
    topics.add_argument("--embedder", default="all-MiniLM-L6-v2")
    publish = sub.add_parser("publish", help="push a run's adapter (and a compare Space); token from HF_TOKEN")
    publish.add_argument("--run", required=True, help="run folder name (see: cli.py runs)")
    publish.add_argument("--repo", required=True, help="model repo, OWNER/NAME")
    publish.add_argument("--space", help="also create or update this Space, OWNER/NAME")
    publish.add_argument("--votes-repo", help="the Space's private votes dataset, OWNER/NAME (default: the Space's "
                         "name + '-votes'; 'none': the Space keeps no votes)")
    publish.add_argument("--private", action="store_true")
    publish.add_argument("--what", default="adapter",
                         help="adapter (default), merged, or gguf-<quant> such as gguf-q8_0 (exported first if needed)")
    votes = sub.add_parser("votes", help="the votes: export as DPO pairs or as rated answers (KTO), leaderboard, "
                           "pull a Space's votes from the Hub, accept those waiting for review")
    votes.add_argument("action", choices=("export", "thumbs", "table", "pull", "accept"))
    votes.add_argument("dataset", nargs="?", help="pull: the Space's votes dataset, OWNER/NAME")
    votes.add_argument("--token", help="pull: a Hugging Face token for a private dataset (default: HF_TOKEN)")
    votes.add_argument("--out", help="export, thumbs: the jsonl file to write (default preferences.jsonl, "
                       "thumbs.jsonl)")
    evaluate = sub.add_parser("eval", help="score a finished run's held-out answers (base vs tuned) again")
    evaluate.add_argument("--run", required=True, help="run folder name (see: cli.py runs)")
    evaluate.add_argument("--rows", type=int, default=0, help="held-out rows to score (default: the run's eval_rows, "
                          "or 16 when that was 0)")
    effect = sub.add_parser("effect", help="where tuning helped or hurt: held-out losses, base vs tuned, by topic")
    effect.add_argument("--run", required=True, help="a finished SFT or DAPT run (see: cli.py runs)")
    effect.add_argument("--embedder", help="the embedder that groups the rows (default: the packaged MiniLM; or a "
                        "tuned embedder's run name)")
    export = sub.add_parser("export", help="merge a run's adapter into its base; or write GGUF + Modelfile")
    export.add_argument("--run", required=True, help="run folder name (see: cli.py runs)")
    export.add_argument("--format", choices=("merged", "gguf"), default="merged",
                        help="merged: a plain safetensors model folder; gguf: one file for llama.cpp/Ollama")
    export.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16", help="merged weights")
    export.add_argument("--quant", choices=("f16", "bf16", "q8_0", "q4_0"), default="q8_0",
                        help="GGUF tensor type of the 2-D weights (norms stay f32)")
    export.add_argument("--check", action="store_true", help="gguf: then compare its greedy answers and chat "
                        "template with the adapter's and the merged model's (writes parity.json)")
    hub = sub.add_parser("hub", help="search the Hub for models or datasets by task (a dataset id trains as is)")
    hub.add_argument("kind", choices=("models", "datasets"))
    hub.add_argument("--task", default="", help="models: a pipeline tag (default text-generation); datasets: a "
                     "task category such as question-answering (default: any)")
    hub.add_argument("--query", default="", help="name contains")
    hub.add_argument("--library", default="transformers", help="models: transformers, sentence-transformers, peft")
    hub.add_argument("--max-params", type=float, default=1000, help="models: at most this many million parameters")
    hub.add_argument("--sort", choices=("downloads", "likes", "last_modified"), default="downloads")
    hub.add_argument("--limit", type=int, default=20)
    serve = sub.add_parser("serve", help="the OpenAI-compatible endpoint (/v1/models, /v1/chat/completions) alone")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--print-vllm", metavar="RUN", help="print the vLLM command that serves RUN's adapter instead")
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        return cmd_train(argv[1:])
    args = build_parser().parse_args(argv)
    commands = {"chat": cmd_chat, "runs": cmd_runs, "topics": cmd_topics, "publish": cmd_publish,
                "export": cmd_export, "effect": cmd_effect, "votes": cmd_votes, "eval": cmd_eval, "hub": cmd_hub,
                "serve": cmd_serve}
    try:
        return commands[args.command](args)
    except LabError as exc:  # the one place a command's user-facing error is printed
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
