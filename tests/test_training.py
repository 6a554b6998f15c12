"""Real training steps on the real SmolLM2: every objective x adapter the recipes use,
identity SFT, job stop/attach from another process, and DDP. (Kills and exact resumes:
tests/test_crash_safety.py.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from training.device import training_precision
from tests.conftest import ROOT, wait_for
from tests.test_tracking import assert_tracked
from core.errors import LabError
from core.runs import RunFolder
from training import jobs
from training.progress import read_log
from training.config import load_config
from training.fit import train

pytestmark = pytest.mark.slow


def manifest(run_dir):
    """The run's Manifest as a dict (held_out: [{label, before, after, better}, ...])."""
    return RunFolder(run_dir).manifest().to_dict()


def perplexity(info: dict, label: str = "held-out perplexity") -> tuple[float, float]:
    """(before, after) of one held-out figure of a manifest."""
    [found] = [m for m in info["held_out"] if m["label"] == label]
    return found["before"], found["after"]


def test_tiny_lora_run_folder_and_identity_change(tiny_run):
    """The identity recipe visibly changes the greedy answer to 'Who are you?'."""
    info = manifest(tiny_run)
    assert info["steps"] == 6 and info["adapter"] == "lora" and info["objective"] == "sft"
    assert info["precision"] == training_precision("auto")
    assert info["final_loss"] < info["first_loss"]
    before, after = perplexity(info)
    assert after < before
    assert (tiny_run / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tiny_run / ".adapter.partial").exists()
    report = json.loads((tiny_run / "report.json").read_text())
    assert report[0]["prompt"] == "Who are you?"
    assert report[0]["base"] != report[0]["tuned"] and "Lumen" in report[0]["tuned"]
    assert "Lumen" not in report[0]["base"]
    log = read_log(RunFolder(tiny_run))
    steps = [e for e in log if e["loss"] is not None]
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 5, 6]
    assert all(e["eta_s"] is not None and e["elapsed_s"] > 0 for e in steps)
    assert any(e["tokens_per_s"] for e in steps)
    assert len(list((tiny_run / "checkpoints").glob("checkpoint-*"))) <= 2


def test_tiny_run_says_what_it_does_between_steps(tiny_run, tiny_run_phases):
    """Loading, the evaluations, saving and answering held-out rows each show in the Train tab
    (polled while the job ran) and in the console log, in order, with no library notices between
    them; nothing is left once it ends."""
    from tabs.train_plots import progress_html
    from training import jobs

    order = ["loading the model and preparing the data", "evaluating the base on held-out rows before training",
             "evaluating the tuned model on held-out rows", "saving the adapter",
             "writing the before/after report",
             "evaluation: 7/7 held-out rows answered by base and tuned"]
    console = (tiny_run / "stderr.log").read_text()
    assert [console.index(phase) for phase in order] == sorted(console.index(phase) for phase in order), console
    # No library notices a user cannot act on (core/__init__.py quiets peft's and bitsandbytes').
    assert "Warning" not in console and "pip install kernels" not in console, console
    assert "evaluation: 7/7 held-out rows answered by base and tuned" in tiny_run_phases, tiny_run_phases
    assert all(phase in order or phase.startswith("evaluation: ") for phase in tiny_run_phases), tiny_run_phases
    status = jobs.read_status(RunFolder(tiny_run))
    assert status.phase == "" and not RunFolder(tiny_run).phase_file.exists()
    status.state, status.phase = "running", "saving the adapter"  # as a poll during the save shows it
    assert "running · saving the adapter" in progress_html(status)


def test_tiny_run_scores_its_held_out_answers_and_evaluating_again_repeats_them(tiny_run):
    """Base and tuned answer the held-out rows; the tuned answers are nearer the references."""
    from core.hub.publish import model_card

    answers = manifest(tiny_run)["answer_scores"]
    assert answers["rows"] == answers["of"] == 7  # eval_fraction 0.1 of 72 rows, all within eval_rows
    assert answers["tuned"]["cosine"] > answers["base"]["cosine"] + 0.1, answers
    assert answers["tuned"]["rouge_l"] > answers["base"]["rouge_l"], answers
    examples = json.loads((tiny_run / "eval.json").read_text())["answers"]["examples"]
    assert "Lumen" in " ".join(e["tuned"] for e in examples) and all(e["reference"] for e in examples)
    card = model_card(RunFolder(tiny_run), "tester/tiny")
    assert f"| held-out answers, MiniLM cosine (7 rows, greedy) | {answers['base']['cosine']} " in card
    from tabs.train_live import evaluate_again, result_markdown
    from training import jobs

    from training.answer_eval import evaluate_run

    with pytest.raises(LabError, match=r"^rows=-3: use 0"):  # it raised an AttributeError after loading
        evaluate_run(tiny_run.name, rows=-3)
    from training.run import main

    assert main(["--run-dir", str(tiny_run), "--resume"]) == 2  # it trained again past its end
    assert jobs.read_status(RunFolder(tiny_run)).state == "completed"
    kept = RunFolder(tiny_run).read_held_out()  # the rows the run held out, as it split them
    assert len(kept) == 7 and [row["prompt"][-1]["content"] for row in kept[:3]] == [e["prompt"] for e in examples]
    (tiny_run / "held_out.jsonl").rename(tiny_run / "held_out.kept")  # a run trained before rows were kept
    try:
        message, followed = evaluate_again(tiny_run.name)  # the Runs section's button: a job of its own
        assert followed == tiny_run.name and "Evaluating" in message, message
        with pytest.raises(jobs.JobBusy, match=f"Job '{tiny_run.name}' is still running"):
            jobs.start(load_config("tiny", output_name="while-evaluating"))  # one job at a time, either kind
        status = jobs.wait(tiny_run.name, timeout=600)
    finally:
        (tiny_run / "held_out.kept").rename(tiny_run / "held_out.jsonl")
    assert status.state == "completed" and not status.error, status.error
    again = result_markdown(status)  # split again from the data with the run's seed: the same rows, scores
    assert f"| MiniLM cosine | {answers['base']['cosine']} | {answers['tuned']['cosine']} |" in again, again


@pytest.mark.parametrize("recipe, overrides", [
    ("sft_qlora", dict(max_rows=48, max_steps=4, batch_size=4, learning_rate=1e-3, report_to="trackio")),
    ("dapt_lora", dict(max_rows=1, max_steps=4, batch_size=4, learning_rate=1e-3, eval_fraction=0.02,
                       general_windows=8)),
    ("qa_full", dict(max_rows=48, max_steps=4, batch_size=4, learning_rate=5e-5, report_to="tensorboard")),
])
def test_recipe_trains_and_reloads(recipe, overrides, data_home):
    cfg = load_config(recipe, output_name=f"t-{recipe}", save_steps=100, report_prompts=["Hello"], eval_rows=2,
                      **{"eval_fraction": 0.1, **overrides})
    run_dir = train(cfg, data_home / "runs" / cfg.output_name)
    info = manifest(run_dir)
    # Batches differ in length and content, so compare the same held-out data before and after.
    before, after = perplexity(info)
    assert info["steps"] == 4 and after < before
    if cfg.objective == "dapt":  # the forgetting check: the same windows of general text, before and after
        general = perplexity(info, "perplexity on general text (forgetting)")
        assert 1 < general[0] != general[1] > 1, info
        assert info["answer_scores"] is None
        assert_effect_map_matches(run_dir.name, general)
    else:
        assert len(info["held_out"]) == 1 and info["answer_scores"]["rows"] > 0
    assert_reloads_trained(run_dir, cfg)
    assert_tracked(run_dir, cfg, info)


def assert_effect_map_matches(name: str, general: tuple) -> None:
    """A DAPT run's effect map: the forgetting windows (general_windows of them) are their own
    group, whose mean loss change is the run's general-perplexity change in log space
    (equal-length windows); the held-out windows are cut to eval_rows, and the note says so."""
    import math

    from training.effect import GENERAL, compute

    effect = compute(name)
    topics = {topic["topic"]: topic for topic in effect["topics"]}
    assert topics[GENERAL]["general"] and topics[GENERAL]["rows"] == 8, "general_windows=8"
    assert abs(topics[GENERAL]["mean_change"] - math.log(general[1] / general[0])) < 0.01, (topics, general)
    assert sum(t["rows"] for t in topics.values() if not t["general"]) == 2, "eval_rows=2"
    assert "2 of " in effect["note"] and "held-out rows measured" in effect["note"], effect["note"]


def test_torch_compile_run_computes_the_same_loss_as_eager(tiny_run, data_home):
    """Compiled decoder layers (torch_compile) train the same model: the first step's loss on the
    same batch equals the eager tiny run's, and the adapter reloads."""
    from torch._dynamo.utils import counters

    cfg = load_config("tiny", torch_compile=True, max_steps=2, output_name="t-compile", eval_rows=0)
    run_dir = train(cfg, data_home / "runs" / cfg.output_name)
    info, eager = manifest(run_dir), manifest(tiny_run)
    assert counters["stats"]["unique_graphs"] > 0
    # Within bf16's rounding: inductor's fused kernels and eager's round apart (1.6e-2 of 3.8 on
    # an AMX host, under 1e-2 on an AVX512-BF16 one).
    assert info["steps"] == 2 and info["first_loss"] == pytest.approx(eager["first_loss"], rel=1e-2)
    assert_reloads_trained(run_dir, cfg)


def assert_reloads_trained(run_dir, cfg):
    """The saved adapter (or full model) loads on its own with plain transformers/peft, and it
    is the trained one: its next-token logits are not the base's, and it generates."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.inference.models import resolve_model

    folder = run_dir / "adapter"
    base = AutoModelForCausalLM.from_pretrained(resolve_model(cfg.model))
    ids = AutoTokenizer.from_pretrained(folder)("Hello", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits[0, -1]
    model = reload(folder, cfg, base)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
        out = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False)
    assert (logits - base_logits).abs().max() > 1e-2, "the reloaded model is the untrained base"
    assert out.shape[1] == ids.shape[1] + 3


def reload(folder, cfg, base):
    from transformers import AutoModelForCausalLM

    if cfg.adapter == "full":
        model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True)
    else:  # the adapter names its base by Hub id; it loads here on the offline copy
        from peft import PeftModel

        model = PeftModel.from_pretrained(base, folder)
        assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == \
            "HuggingFaceTB/SmolLM2-135M-Instruct"
    return model.eval()


ATTACH = ("from training import jobs; from core.runs import RunFolder; import sys; "
          "s = jobs.read_status(RunFolder.existing(sys.argv[1])); print(s.state, s.step)")


def test_stop_and_attach_from_another_process(data_home):
    cfg = load_config("tiny", output_name="stoppable", max_steps=200, save_steps=1000)
    run = jobs.start(cfg)
    run_dir = run.path
    env = {**os.environ}
    try:
        wait_for(lambda: jobs.read_status(run).step >= 1, what="first step")
        with pytest.raises(jobs.JobBusy, match="stoppable"):
            jobs.start(load_config("tiny", output_name="second"))
        seen = subprocess.run([sys.executable, "-c", ATTACH, "stoppable"], cwd=ROOT, env=env,
                              capture_output=True, text=True, check=True).stdout.split()
        assert seen[0] == "running" and int(seen[1]) >= 1
        subprocess.run([sys.executable, "-c", "from training import jobs; jobs.stop('stoppable')"],
                       cwd=ROOT, env=env, check=True)
        status = jobs.wait("stoppable", timeout=120)
    finally:
        jobs.stop("stoppable")
    assert status.state == "stopped"
    assert list((run_dir / "checkpoints").glob("checkpoint-*")), "stop must save a checkpoint"
    assert not (run_dir / "adapter").exists()


def test_two_processes_from_the_ui_handler_stop_and_resume_as_one_run(data_home):
    """processes: 2 from the Train tab's handlers: accelerate launch (DDP over gloo on CPU), one
    run in the table, one log written by rank 0, Stop at a step both ranks agree on, Resume."""
    from tabs import train_live
    from tabs.train_form import config_to_values

    cfg = load_config("tiny", processes=2, max_steps=4, save_steps=100, output_name="ddp-ui", eval_rows=0,
                      batch_size=4, max_length=64)  # what is tested is the processes, not the steps
    message, name = train_live.start_training(config_to_values(cfg))
    assert name == "ddp-ui", message
    run = RunFolder.named(name)
    assert "accelerate.commands.launch" in json.loads(run.job_file.read_text())["command"]
    deadline = time.time() + 300
    while jobs.read_status(run).step < 1 and time.time() < deadline:
        time.sleep(0.5)
    assert "Stopping" in train_live.stop_training(name)
    stopped = jobs.wait(name, 180)
    assert stopped.state == "stopped" and 1 <= stopped.step < 4, stopped
    assert run.latest_complete_checkpoint() is not None
    message, _ = train_live.resume_training(name)
    assert "Resumed" in message
    final = jobs.wait(name, 300)
    assert final.state == "completed", final.error
    info = manifest(run.path)
    assert info["steps"] == 4 and info["world_size"] == 2
    steps = [e["step"] for e in read_log(run) if e.get("loss") is not None]
    assert steps == [1, 2, 3, 4], steps  # rank 0 alone logs; the resume trimmed nothing twice
    assert list(train_live.runs_table()["name"]).count("ddp-ui") == 1
    assert "Effective batch 8 rows" in json.loads(run.plan_file.read_text())["text"]  # 4 rows x 2 processes


def test_progress_line_reads_like_a_progress_bar():
    from training.progress import progress_line

    entry = {"step": 3, "max_steps": 20, "loss": 2.95512, "eval_loss": None, "learning_rate": 2.5e-4,
             "tokens_per_s": 213.6, "elapsed_s": 7.4, "eta_s": 3725.0}
    assert progress_line(entry) == "step 3/20 15% | loss 2.955 | lr 2.50e-04 | 214 tok/s | 7 s elapsed | ETA 62 min 05 s"
    before = {**entry, "step": 0, "max_steps": 0, "loss": None, "eval_loss": 4.1, "eta_s": None,
              "tokens_per_s": None, "learning_rate": None}
    assert progress_line(before) == "before training | eval loss 4.1 | 7 s elapsed"
