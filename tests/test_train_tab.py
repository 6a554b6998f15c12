"""Train tab handlers called directly (no browser), including stop/resume on a real job."""
from __future__ import annotations

import time

import pytest

from core.errors import LabError

from core import threads
from core.runs import RunFolder
from tabs import train, train_data, train_form, train_live
from tabs.session import save_upload
from training import jobs
from training.config import TrainConfig, load_config


def values(**changes):
    cfg = TrainConfig(**changes)
    return train_form.config_to_values(cfg)


def test_form_round_trips_every_recipe():
    for name in ("tiny", "sft_qlora", "dapt_lora", "qa_full"):
        cfg = load_config(name)
        assert train_form.values_to_config(train.load_recipe(name)) == cfg


def test_form_covers_every_config_field():
    from dataclasses import fields

    assert train_form.NAMES == [f.name for f in fields(TrainConfig)]
    with pytest.raises(LabError, match="choose one of"):
        train_form.values_to_config({**values(), "objective": "nope"})


def test_upload_detection_and_mapping(tmp_path):
    src = tmp_path / "my data.csv"
    src.write_text("Q,A\nWhy?,Because.\nHow?,Like this.\n")
    stored = save_upload(str(src))
    assert stored.endswith("my_data.csv") and "uploads" in stored
    summary, head, columns = train_data.inspect_data(stored)
    assert "Cannot detect" in summary and columns == ["Q", "A"], "the mapping dropdowns need the columns"
    mapping = train_data.mapping_string("Q", "A", "")
    assert mapping == "question=Q,answer=A"
    summary, head, columns = train_data.inspect_data(stored, mapping)
    assert "**2 rows**" in summary and "qa" in summary and list(head.columns) == ["question", "answer"]


def test_bad_file_gives_a_message_not_a_traceback(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"question": "a"\n')
    summary, head, _ = train_data.inspect_data(str(tmp_path / "bad.jsonl"))
    assert summary.startswith("⚠️") and "row 1: broken JSON" in summary and head is None


def test_preview_highlights_the_answer():
    segments, info = train_data.preview_example(0, values(dataset="identity"))
    assert segments[1][1] == "trained" and "<|im_start|>assistant" in segments[0][0]
    assert "trained on" in info
    segments, info = train_data.preview_example(0, values(dataset="shakespeare", objective="dapt", max_rows=1))
    assert "overlaps" in segments[-1][1] and "windows of 128 tokens" in info


def test_malformed_rows_are_one_line_errors_in_the_ui(tmp_path):
    (tmp_path / "nulls.jsonl").write_text('{"question": "Hi", "answer": "Hello"}\n{"question": null, "answer": "x"}\n')
    (tmp_path / "ragged.csv").write_text("question,answer\nHi,Hello\nWho\n")
    segments, _ = train_data.preview_example(1, values(dataset=str(tmp_path / "nulls.jsonl")))
    assert segments[0][0] == "⚠️ row 2: 'question' is empty (null or a missing field); fill it in or drop the row."
    segments, _ = train_data.preview_example(1, values(dataset=str(tmp_path / "ragged.csv")))
    assert segments[0][0].startswith("⚠️ row 2: 'answer' is empty")


def test_cli_preview_yaml_downloads_and_reloads():
    command, text, path = train.cli_preview(values(max_steps=7))
    assert command.startswith("python cli.py train --config") and "max_steps: 7" in text
    assert load_config(path).max_steps == 7


def test_explanations_come_from_help_strings():
    assert "4-bit" in train._explain("sft", "qlora") and "next-token" in train._explain("dapt", "lora")


def job_environment(run: str) -> dict:
    import json

    pid = json.loads(RunFolder.named(run).job_file.read_text())["pid"]
    raw = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


@pytest.mark.slow
def test_stop_and_resume_through_ui_functions(data_home, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_never_passed_on")
    message, run = train_live.start_training(values(output_name="ui-stop", max_steps=200, save_steps=1000,
                                                    learning_rate=1e-3, max_length=128))
    assert run == "ui-stop", message
    deadline = time.time() + 180
    while jobs.read_status(RunFolder.named(run)).step < 1 and time.time() < deadline:
        time.sleep(0.5)
    busy, _ = train_live.start_training(values(output_name="ui-other"))
    assert "still running" in busy
    from tabs import chat

    *_, (base, _, status, _) = chat.respond(chat.ChatRequest("Hi", [], [], max_new_tokens=4))
    assert base[-1]["content"] and "training job 'ui-stop' is running" in status, "chat works while training"
    from cli import main as cli

    assert cli(["runs", "--stop", run]) == 0  # the CLI's twin of Stop
    assert capsys.readouterr().out.startswith(f"Stopping {run}: it saves a checkpoint, then ends. Resume: python cli.py")
    assert jobs.wait(run, 120).state == "stopped"
    step = jobs.read_status(RunFolder.named(run)).step
    message, _ = train_live.resume_training(run)
    assert "Resumed" in message
    while jobs.read_status(RunFolder.named(run)).step <= step and time.time() < deadline + 120:
        time.sleep(0.5)
    # Read once the job has stepped: right after Popen returns, exec may not yet have laid out
    # the new environment, and /proc/<pid>/environ can read empty.
    env = job_environment(run)  # resume gets the same thread policy as start, and no secrets
    assert env["OMP_NUM_THREADS"] == str(threads.for_job()) and "HF_TOKEN" not in env
    # Stop from a tab that did not start the run (or /train_stop over the API): the one running job
    assert train_live.stop_training("") == "Stopping **ui-stop**: saving a checkpoint…"
    final = jobs.wait(run, 120)
    assert final.state == "stopped" and final.step > step
    view = train_live.poll(run, None)
    assert f"step {final.step}/200" in view.progress and "stopped" in view.stats and view.state == "stopped"
    assert len(view.plot.data[0].x) >= 2
    assert cli(["runs", "--stop"]) == 2 and capsys.readouterr().err == "error: No job is running.\n"
    assert cli(["runs", "--delete", run]) == 2 and "add --yes" in capsys.readouterr().err
    assert cli(["runs", "--delete", "ui-stpo"]) == 2  # a typo: it asked for --yes first
    assert capsys.readouterr().err == "error: No run named 'ui-stpo'.\n"
    assert "Deleted" in train_live.delete_run(run, True)
