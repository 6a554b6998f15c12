"""The training controls (scheduler, warmup, weight decay, optimizer, clipping, NEFTune, chat
template) reach trl's trainers, read back from the trainer's own `args`, and the schedule from
the learning rates a real SmolLM2 run logs."""
from __future__ import annotations

import json
import math

import pytest

from core.errors import LabError
from core.runs import RunFolder
from tabs import train_live
from training.config import load_config

CONTROLS = dict(lr_scheduler="cosine", warmup=2, weight_decay=0.05, optimizer="adafactor", max_grad_norm=0.5,
                neftune_alpha=5.0)


def build_trainer(cfg, run, tokenizer, train_set, eval_set):
    from training.objectives import get

    return get(cfg.objective).trainer(cfg, run, tokenizer, train_set, eval_set, [])


@pytest.mark.parametrize("recipe", ["tiny", "dpo_lora", "kto_lora"])
def test_each_control_reaches_the_trainer_args(recipe, data_home):
    from training.model_setup import load_tokenizer
    from training.prepare import build_examples, split_examples

    cfg = load_config(recipe, max_rows=16, **CONTROLS)
    tokenizer = load_tokenizer(cfg.model, cfg.chat_template)
    train_set, eval_set = split_examples(build_examples(cfg, tokenizer), cfg)
    args = build_trainer(cfg, RunFolder(data_home / "runs" / f"args-{recipe}"), tokenizer, train_set, eval_set).args
    assert (args.lr_scheduler_type.value, args.warmup_steps, args.weight_decay, args.optim.value,
            args.max_grad_norm, args.neftune_noise_alpha) == ("cosine", 2, 0.05, "adafactor", 0.5, 5.0)
    constant = load_config(recipe, lr_scheduler="constant", warmup=0.1)
    args = build_trainer(constant, RunFolder(data_home / "runs" / "c"), tokenizer, train_set, eval_set).args
    assert (args.lr_scheduler_type.value, args.warmup_steps, args.neftune_noise_alpha) == \
        ("constant_with_warmup", 0.1, None)


@pytest.mark.slow
def test_cosine_with_warmup_is_the_schedule_the_run_logs(data_home, tiny_run, capsys):
    from training.progress import read_log
    from training.fit import train

    cfg = load_config("tiny", output_name="cosine-run", max_steps=6, save_steps=100, eval_fraction=0,
                      lr_scheduler="cosine", warmup=2, optimizer="adamw_torch", weight_decay=0.01,
                      batch_size=4, max_length=64)  # what is tested is the schedule: short steps
    run = RunFolder(train(cfg, data_home / "runs" / cfg.output_name))
    logged = [e["learning_rate"] for e in read_log(run) if e.get("loss") is not None]
    peak, warm, total = cfg.learning_rate, 2, 6

    def planned(step):  # the rate in force during `step` (1-based): linear warmup, then half a cosine
        done = step - 1
        if done < warm:
            return peak * done / warm
        return peak * 0.5 * (1 + math.cos(math.pi * (done - warm) / (total - warm)))
    assert logged == pytest.approx([planned(step) for step in range(1, 7)], abs=1e-9), logged
    assert run.manifest().final_loss < run.manifest().first_loss
    assert all(e["grad_norm"] > 0 for e in read_log(run) if e.get("loss") is not None)
    plan = json.loads(run.plan_file.read_text())
    assert plan["rows_per_step"] == cfg.batch_size * cfg.grad_accum and plan["tokens_per_step"] > 10 * cfg.batch_size
    assert f"Effective batch {plan['rows_per_step']} rows" in train_live.poll(run.name, None).stats

    by_epoch = train_live.poll(run.name, None, x_axis="epoch")
    schedule = {trace.name: trace for trace in by_epoch.schedule.data}
    assert list(schedule["learning rate"].y) == logged and len(schedule["grad norm"].y) == 6
    epochs = list(by_epoch.plot.data[0].x)
    assert epochs == sorted(epochs) and 0 < epochs[-1] < 1 and by_epoch.plot.layout.xaxis.title.text == "epoch"

    # Compared with the tiny run (linear, no warmup): two curves, the settings that differ, both results.
    from tabs.train_compare import compare_view

    figure, diff, figures, line = compare_view([run.name, tiny_run.name])
    curves = {trace.name: list(trace.y) for trace in figure.data if "eval" not in trace.name}
    assert set(curves) == {"cosine-run", "tiny-fixture"} and len(curves["cosine-run"]) == 6
    differ = {row[0]: row[1:] for row in diff["value"]}
    assert differ["lr_scheduler"] == ["cosine", "linear"] and differ["warmup"] == ["2.0", "0.0"], differ
    assert "learning_rate" not in differ and "model" not in differ and diff["headers"] == ["setting", *curves]
    results = {row[0]: row[1:] for row in figures["value"]}
    assert results["steps"] == [6, 6] and results["held-out answers, embedding cosine (base)"][0] is None
    assert "setting(s) differ" in line and "Pick two to four" in compare_view([run.name])[3]
    from cli import main as cli

    assert cli(["runs", "--compare", run.name, tiny_run.name]) == 0  # the same tables, as text
    printed = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["setting", "cosine-run", "tiny-fixture"] in printed and ["lr_scheduler", "cosine", "linear"] in printed
    assert ["steps", "6", "6"] in printed and ["figure", "cosine-run", "tiny-fixture"] in printed


def test_chat_template_choice_is_shown_and_validated(data_home):
    from training.model_setup import load_tokenizer
    from training.prepare import build_examples, preview

    chatml = preview(load_config("tiny", chat_template="chatml"), 0)
    assert "Format: ChatML" in chatml.note and "<|im_start|>user" in chatml.segments[0][0]
    plain = preview(load_config("tiny", chat_template="plain"), 0)
    assert "Format: plain" in plain.note and plain.segments[0][0].startswith("Question: ")
    assert "Format: the model's own chat template" in preview(load_config("tiny"), 0).note
    gemma = preview(load_config("tiny", model="gemma-3-270m"), 0)  # a pretrained base: no template
    assert "(this model has no chat template;" in gemma.note
    assert gemma.segments[0][0].removeprefix("<bos>").startswith("Question: ")
    rows = build_examples(load_config("tiny", chat_template="plain"), load_tokenizer("smollm2-135m-instruct", "plain"))
    assert isinstance(rows[0]["prompt"], str) and rows[0]["prompt"].startswith("Question: ")
    for bad in (dict(optimizer="lion"), dict(lr_scheduler="step"), dict(warmup=-1), dict(chat_template="alpaca")):
        with pytest.raises(LabError):
            load_config("tiny", **bad)


@pytest.mark.slow
def test_chat_prompts_an_adapter_in_the_format_it_trained_on(data_home, tiny_run, monkeypatch, capsys):
    """chat_template: chatml is saved with the adapter, and Compare prompts its pane in ChatML; an
    SFT adapter saved without a template gets the plain "Question:/Answer:" text it trained on.
    The run's report and held-out answers are generated on the decode thread after the thread
    that trained has ended (training.fit: with its OpenMP team alive they took twice as long)."""
    import shutil
    import threading

    from core.inference.adapters import attach_tuned, trained_format
    from core.inference.chat import QA_FORMAT, GenerationSettings, build_inputs
    from core.inference.models import load_model
    from training import fit as fit_module
    from training.model_setup import CHATML, load_tokenizer
    from training.prepare import build_examples
    from training.fit import train

    cfg = load_config("tiny", output_name="chatml-run", max_steps=2, save_steps=100, eval_rows=2, chat_template="chatml")
    base, seen = load_model(cfg.model), {"fit": [], "generate": set()}  # the run's report and answers load it too
    embedding = base.model.get_input_embeddings()  # called by every forward, under peft's wrappers too
    hook = embedding.register_forward_pre_hook(lambda *_: seen["generate"].add(threading.current_thread().name))
    real_fit, real_finish = fit_module.run_steps, fit_module.finish
    monkeypatch.setattr(fit_module, "run_steps", lambda *a: seen["fit"].append(threading.current_thread()) or real_fit(*a))
    monkeypatch.setattr(fit_module, "finish", lambda *a: seen.update(trained_alive=seen["fit"][0].is_alive()) or real_finish(*a))
    try:
        run = RunFolder(train(cfg, data_home / "runs" / cfg.output_name))
    finally:
        hook.remove()
    assert seen["fit"][0] is not threading.main_thread() and seen["trained_alive"] is False
    assert len(seen["generate"]) == 1 and seen["generate"].pop().startswith("decode"), seen
    assert attach_tuned(base, tiny_run.name).chat_template is None  # trained in the model's own template
    tuned = attach_tuned(base, run.name)
    question = [{"role": "user", "content": "Who are you?"}]
    ids, _ = build_inputs(base, question, GenerationSettings(chat_template=tuned.chat_template))
    assert tuned.chat_template == CHATML
    assert base.tokenizer.decode(ids[0]) == "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n"
    from cli import main as cli  # the CLI's tuned pane too (it prompted in the base's template)

    assert cli(["chat", "--adapter", run.name, "--max-new-tokens", "4", "Who are you?"]) == 0
    assert f"; prompt {ids.shape[1]} tokens]" in capsys.readouterr().err
    assert json.loads(run.report_json.read_text())[0]["tuned"] and run.manifest().answer_scores["rows"] == 2

    plain_cfg = load_config("tiny", output_name="plain-format", max_steps=1, eval_fraction=0, chat_template="plain")
    plain = RunFolder(train(plain_cfg, data_home / "runs" / plain_cfg.output_name))
    moved = data_home / "elsewhere"  # the adapter folder carries its format wherever it goes (the Hub too)
    shutil.copytree(plain.adapter, moved)
    assert trained_format(moved, base.tokenizer) == QA_FORMAT
    ids, _ = build_inputs(base, question, GenerationSettings(chat_template=QA_FORMAT))
    trained = build_examples(load_config("tiny", chat_template="plain", max_rows=1),
                             load_tokenizer(cfg.model, "plain"))[0]["prompt"]
    assert base.tokenizer.decode(ids[0]) == "Question: Who are you?\nAnswer:" and trained.startswith("Question: ")


def test_the_shipped_accelerate_configs_load():
    """The FSDP and DeepSpeed files the README points to are valid accelerate configs."""
    from accelerate.commands.config.config_args import load_config_from_file

    from tests.conftest import ROOT

    kinds = {name: load_config_from_file(str(ROOT / "training" / "accelerate" / f"{name}.yaml")).distributed_type.value
             for name in ("fsdp", "deepspeed_zero3")}
    assert kinds == {"fsdp": "FSDP", "deepspeed_zero3": "DEEPSPEED"}
