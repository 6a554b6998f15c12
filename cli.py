"""Finetune Lab from the command line: the same functions the UI calls.

    python cli.py chat "What is the capital of France?"
    python cli.py chat --adapter RUN/adapter --compare "Who are you?"
    python cli.py chat [--adapter RUN [--compare]]      # a conversation: one message a line, /reset, Ctrl-D
    python cli.py train --config training/recipes/sft_lora.yaml [--max_steps 20 ...]
    python cli.py runs [--compare RUN RUN | --stop [RUN] | --delete RUN --yes]
    python cli.py topics --corpus guardian-headlines [--method fast|umap] [--out DIR]
    python cli.py embed --corpus chatterbot [--cluster kmeans --clusters 8] [--classify logreg]
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

import sys
from dataclasses import replace

from cli_args import build_parser, writable
from cli_explore import cmd_embed, cmd_topics
from core.errors import LabError


def cmd_chat(args) -> int:
    from core.inference.adapters import adapter_folder, attach_tuned

    if args.compare and not args.adapter:
        raise LabError("--compare answers with the base and a tuned model side by side: name it with --adapter.")
    # Resolved once (a Hub id is downloaded here), so a typo is one line before the libraries and the model load.
    folder = str(adapter_folder(args.adapter)) if args.adapter else None
    from core.inference.chat import GenerationSettings, check_messages, checked_seed
    from core.inference.models import load_model

    if args.prompt is not None:  # before the model loads
        check_messages([{"role": "user", "content": args.prompt}])
    settings = GenerationSettings(temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                                  system_prompt=args.system or "", seed=checked_seed(args.seed))
    base = load_model(args.model)
    tuned = attach_tuned(base, folder) if folder else None
    if args.prompt is None:
        return chat_session(base, tuned, args.compare, settings)
    chat_turn(base, tuned, [[{"role": "user", "content": args.prompt}]] * (2 if args.compare else 1), settings)
    return 0


def chat_session(base, tuned, compare: bool, settings) -> int:
    """A conversation on stdin, as the Chat tab holds one: each line a message, answered with
    what was said before; `/reset` starts a new conversation; an end of input ends it."""
    histories = [[] for _ in range(2 if compare else 1)]
    print("Type a message and press Enter; /reset starts over; Ctrl-D ends.", file=sys.stderr)
    while True:
        try:
            text = input("you> " if sys.stdin.isatty() else "").strip()
        except EOFError:
            return 0
        if text == "/reset":
            histories = [[] for _ in histories]
            print("(a new conversation)", file=sys.stderr)
        elif text:
            for history in histories:
                history.append({"role": "user", "content": text})
            for history, answer in zip(histories, chat_turn(base, tuned, histories, settings)):
                history.append({"role": "assistant", "content": answer})


def chat_turn(base, tuned, histories: list[list[dict]], settings) -> list[str]:
    """Answer each pane's conversation (one: the tuned model, or the base without one; two:
    Compare's base and tuned, in one batch) and print the answers, streamed when there is one;
    the status line goes to stderr."""
    from core.inference.chat import stream_reply
    from core.inference.compare import stream_compare

    def status(reply) -> str:
        said = f"[{reply.stats}; prompt {reply.prompt_tokens} tokens]"
        return said + (f" [{reply.notice}]" if reply.notice else "")

    if len(histories) == 2:  # both answers come from one batch: print them once done
        *_, replies = stream_compare(base, tuned, *histories, settings)
        for label, reply in zip(("base", "tuned"), replies):
            print(f"--- {label} ---\n{reply.text}", flush=True)
            print(status(reply), file=sys.stderr, flush=True)
        return [reply.text for reply in replies]
    if tuned:  # in the prompt format it trained on (it may not be the base's)
        model, adapter, settings = tuned.loaded, tuned.adapter_name, replace(settings, chat_template=tuned.chat_template)
    else:
        model, adapter = base, None
    shown = 0
    for reply in stream_reply(model, histories[0], settings, adapter):
        print(reply.text[shown:], end="", flush=True)
        shown = len(reply.text)
    print(flush=True)
    print(status(reply), file=sys.stderr, flush=True)
    return [reply.text]


def cmd_train(rest: list[str]) -> int:
    from training.run import main

    return main(rest)


def cmd_runs(args) -> int:
    from core.runs import RunFolder
    from training import jobs

    if args.compare:
        return print_comparison(args.compare)
    if args.stop is not None:
        name = args.stop or jobs.current_job()
        if not name or not jobs.stop(name):
            raise LabError(f"Run '{name}' is not running." if name else "No job is running.")
        print(f"Stopping {name}: it saves a checkpoint, then ends. Resume: "
              f"{jobs.resume_command(RunFolder.existing(name))}")
        return 0
    if args.delete:
        RunFolder.existing(args.delete)  # a typo says so, not "add --yes"
        if not args.yes:
            raise LabError(f"Deleting '{args.delete}' removes its adapter and checkpoints: add --yes.")
        jobs.delete(args.delete)
        print(f"Deleted {args.delete}.")
        return 0
    for run in jobs.list_runs():
        headline = run.manifest.headline() if run.manifest else None
        print(f"{run.name:40} {run.state:10} step {run.step}/{run.max_steps}  {headline.line() if headline else ''}")
    return 0


def print_comparison(names: list[str]) -> int:
    """The Train tab's run comparison as two text tables (its loss plot stays in the app)."""
    import pandas as pd

    from training.runs_compare import config_diff, figures_table, pick_runs

    runs = pick_runs(names)
    for title, rows in (("setting", config_diff(runs)), ("figure", figures_table(runs))):
        cells = [["" if cell is None else str(cell) for cell in row] for row in rows]  # as shown: 6, not 6.0
        print(pd.DataFrame(cells, columns=[title, *(run.name for run in runs)]).to_string(index=False), "\n")
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
        print(f"{votes.export_preferences(writable(Path(args.out)))} preference pair(s) written to {args.out}")
    elif args.action == "thumbs":
        print(f"{votes.export_rated(writable(Path(args.out)))} rated answer(s) written to {args.out}")
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

    from core import access, log_budget
    from core.ports import listening_socket
    from core.settings import declare_public, declare_serving, settings
    from serve.openai_server import standalone

    # Reachable by others with no key: visitors' rules, as app.py does for its own host.
    declare_public(not access.is_loopback(args.host) and not settings().api_key)
    if access.is_public():  # before uvicorn's log handlers take sys.stderr (core.log_budget)
        log_budget.install()
    declare_serving()
    listening = listening_socket(args.host, args.port)  # a taken port: one line, before the URL is printed
    print(f"OpenAI-compatible endpoint: http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.Server(uvicorn.Config(standalone(), log_level="warning")).run(sockets=[listening])
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        return cmd_train(argv[1:])
    args = build_parser().parse_args(argv)
    commands = {"chat": cmd_chat, "runs": cmd_runs, "topics": cmd_topics, "embed": cmd_embed, "publish": cmd_publish,
                "export": cmd_export, "effect": cmd_effect, "votes": cmd_votes, "eval": cmd_eval, "hub": cmd_hub,
                "serve": cmd_serve}
    try:
        return commands[args.command](args)
    except LabError as exc:  # the one place a command's user-facing error is printed
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
