"""What a run's settings, recipe and data are checked for before it starts: one line for each
impossible setting or missing input, from the CLI, the Train tab's Start and a resume, and no
failed run left behind. (Bad rows inside a file: tests/test_data.py.)"""
from __future__ import annotations

import math
import os
import re

import pytest

from core.data.columns import FirstRows
from core.data.rows import DataError, load_rows
from core.errors import LabError
from tests.test_data import ROWS, write_jsonl
from training.config import config_from_dict, load_config


def test_a_missing_data_file_or_run_is_refused_before_a_run_exists(tmp_path, monkeypatch, capsys, data_home):
    """The CLI's run and the Train tab's Start check the data file and the model's name first,
    and a resume its run: a typo is one line, with no failed run left behind and no model loaded
    (a model folder without config.json failed as a run); a file's path is kept absolute (a job
    runs in the repository's folder); bundled names and Hub ids pass."""
    from core.data.rows import checked_source
    from core.runs import RunFolder
    from training import jobs
    from training.run import main

    missing = tmp_path / "typo.jsonl"
    assert main(["--config", "tiny", "--dataset", str(missing), "--output_name", "typo-run"]) == 2
    assert capsys.readouterr().err == f"error: {missing}: file not found.\n"
    # --resume of a run that is not there: refused (it trained a new run from scratch)
    for where in (["--config", "tiny", "--output_name", "typo-run"], ["--run-dir", str(tmp_path / "typo-run")]):
        assert main([*where, "--resume"]) == 2
        assert capsys.readouterr().err.startswith("error: Nothing to resume")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match=r"^empty\.jsonl: the file is empty\.$"):
        checked_source(str(tmp_path / "empty.jsonl"))
    with pytest.raises(DataError, match=r"notes\.xlsx: unsupported file type"):
        jobs.start(load_config("tiny", dataset="notes.xlsx", output_name="typo-run"))
    with pytest.raises(LabError, match=rf"^'{re.escape(str(tmp_path))}' is a path but not a model folder \(no config\.json\)\.$"):
        jobs.start(load_config("tiny", model=str(tmp_path), output_name="typo-run"))
    assert main(["--config", "tiny", "--model", "../no such/model", "--output_name", "typo-run"]) == 2
    assert capsys.readouterr().err == ("error: '../no such/model' is not a local folder, not a known model, and not "
                                       "a valid Hub id.\n")
    assert not RunFolder.named("typo-run").path.exists()
    # A named run must be new: the CLI trained a second process into a live run's folder
    taken = RunFolder.named("taken-run")
    taken.path.mkdir()
    from training.processes import record_job

    for live, said, in_the_app in (
            (False, "A run named 'taken-run' already exists: pick another output_name, or resume it.", None),
            (True, "Run 'taken-run' is running: stop it first, or pick another output_name.",
             "Job 'taken-run' is still running: stop it or wait for it to finish.")):  # one job at a time there
        if live:
            record_job(taken, os.getpid(), ["this test"])
        assert main(["--config", "tiny", "--output-name", "taken-run"]) == 2
        assert capsys.readouterr().err == f"error: {said}\n"
        with pytest.raises(LabError, match=f"^{re.escape(in_the_app or said)}$"):
            jobs.start(load_config("tiny", output_name="taken-run"))
    assert sorted(p.name for p in taken.path.iterdir()) == ["job.json"], "nothing written into it"
    taken.job_file.unlink()  # this worker's later tests may start jobs
    spaced = RunFolder(tmp_path / "my runs" / "x")  # the resume line a user pastes into a shell
    assert jobs.resume_command(spaced) == f"python cli.py train --run-dir '{spaced.path}' --resume"
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "rows.jsonl", [ROWS["qa"]])
    assert checked_source(" rows.jsonl ") == str(tmp_path / "rows.jsonl")
    for empty in ("", "  "):  # it said ": unsupported file type"
        with pytest.raises(DataError, match="^No dataset given: pick a bundled one"):
            checked_source(empty)
        with pytest.raises(DataError, match="^No dataset given"):
            load_rows(empty)
    assert [checked_source(s) for s in ("identity", "chatterbot:ai", "lab/chats:sub@test")] == [
        "identity", "chatterbot:ai", "lab/chats:sub@test"]



def test_data_that_does_not_fit_the_objective_is_refused_at_start(tmp_path, capsys, data_home):
    """DPO on question/answer rows loaded the model and then failed as a run. Start now reads
    the data's first row (its first block's columns, the mapping applied) and refuses in one
    line, with no run folder left; the run still checks every row. A Hub set, and a file whose
    first row does not parse, are left to the run, which names the problem."""
    from core.data.columns import first_rows
    from core.runs import RunFolder
    from training import jobs
    from training.run import main

    assert main(["--config", "tiny", "--objective", "dpo", "--dataset", "identity", "--output_name", "misfit"]) == 2
    assert capsys.readouterr().err == ("error: objective=dpo needs preference rows with prompt, chosen and rejected "
                                       "columns; this data has question, answer.\n")
    refusals = {"sft": ("identity-preferences", r"^This is preference data \(prompt, chosen, rejected\): train it "
                                                r"with objective=dpo\.$"),
                "dapt": ("chatterbot:ai", r"^DAPT needs a 'text' column; have question, answer, category\.$"),
                "kto": ("identity-preferences", r"^objective=kto needs rows with prompt, completion and label"),
                "embed": ("identity", r"^objective=embed needs a text column")}
    for objective, (dataset, said) in refusals.items():
        extra = {"model": "minilm", "adapter": "full", "batch_size": 4} if objective == "embed" else {}
        with pytest.raises(LabError, match=said):
            jobs.start(load_config("tiny", objective=objective, dataset=dataset, output_name="misfit", **extra))
    RunFolder.named("unfinished-embedder").path.mkdir()
    with pytest.raises(LabError, match="^Run 'unfinished-embedder' has not finished: it has no embedder to use yet"):
        load_config("tiny", eval_embedder="unfinished-embedder").checked_for_start()  # it failed after the training
    RunFolder.named("unfinished-embedder").path.rmdir()
    assert not RunFolder.named("misfit").path.exists()
    # A file: the first block's columns (row 1 has no context, row 2 has), and the mapping applied
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"Q": "a", "A": "b"}, {"Q": "c", "A": "d", "context": "e"}] * 50)
    assert first_rows(rows).columns == ["Q", "A", "context"] and first_rows(rows).count == 100  # small: read whole
    assert first_rows(rows, "question=Q,answer=A").columns == ["question", "answer", "context"]
    with pytest.raises(DataError, match="^Cannot detect the format from columns Q, A, context"):
        load_config("tiny", dataset=rows).checked_for_start()
    assert load_config("tiny", dataset=rows, columns="question=Q,answer=A").checked_for_start().dataset == rows
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    assert first_rows(str(tmp_path / "broken.jsonl")) is None
    assert first_rows("lab/chats") is None
    assert "Failed to load JSON" not in capsys.readouterr().err  # the run reports it, once


def test_too_few_rows_to_hold_one_out_are_refused_at_start(tmp_path, data_home):
    """One row with a held-out fraction failed as a run, after the model had loaded. Start counts
    the first two rows (the message is the run's own, training.prepare.held_out_count) and
    refuses in one line; max_rows caps the count, and DAPT, whose examples are windows of text,
    is left to the run. A small file is read whole, and split as the run splits it."""
    from core.data.columns import first_rows
    from core.runs import RunFolder
    from training import jobs

    one = write_jsonl(tmp_path / "one.jsonl", [ROWS["qa"]])
    assert (first_rows(one).columns, first_rows(one).count) == (list(ROWS["qa"]), 1)
    large = write_jsonl(tmp_path / "large.jsonl", [{**ROWS["qa"], "context": "x" * 400}] * 10_000)  # over 4 MB
    assert first_rows(large) == FirstRows(list(ROWS["qa"]), 2)  # its first block: counted up to the two a split needs
    too_few = r"^Only 1 example\(s\): too few for eval_fraction=0.1\. Add data or set eval_fraction to 0\.$"
    with pytest.raises(DataError, match=too_few):
        jobs.start(load_config("tiny", dataset=one, output_name="one-row"))
    assert not RunFolder.named("one-row").path.exists()
    assert load_config("tiny", dataset=one, eval_fraction=0).checked_for_start().dataset == one
    many = write_jsonl(tmp_path / "many.jsonl", [ROWS["qa"]] * 40)
    with pytest.raises(DataError, match=too_few):
        load_config("tiny", dataset=many, max_rows=1).checked_for_start()
    assert load_config("tiny", dataset=many, max_rows=2).checked_for_start().dataset == many
    (tmp_path / "line.txt").write_text("One line of domain text, which DAPT cuts into windows.\n")
    assert load_config("tiny", objective="dapt", dataset=str(tmp_path / "line.txt")).checked_for_start()
    # A small file is read whole: votes on one question leave no prompt to hold out; thumbs
    # that are all up leave KTO nothing bad to learn from. Each says so as its run would.
    pair = {"prompt": [{"role": "user", "content": "Capital of France?"}], "chosen": "Paris.", "rejected": "Lyon."}
    votes = write_jsonl(tmp_path / "votes.jsonl", [pair] * 3)
    with pytest.raises(DataError, match="^Every row has the same prompt: nothing can be held out"):
        load_config("tiny", objective="dpo", dataset=votes).checked_for_start()
    other = {**pair, "prompt": [{"role": "user", "content": "Capital of Italy?"}], "chosen": "Rome."}
    assert load_config("tiny", objective="dpo", dataset=write_jsonl(tmp_path / "two.jsonl", [pair, pair, other]),
                       ).checked_for_start()
    thumbs = write_jsonl(tmp_path / "thumbs.jsonl", [{"prompt": f"Question {n}?", "completion": "Yes.", "label": True}
                                                     for n in range(6)])
    with pytest.raises(DataError, match="^objective=kto needs good and bad answers among the training rows"):
        load_config("tiny", objective="kto", batch_size=2, dataset=thumbs).checked_for_start()
    # a broken second row: the run names its line; Start does not guess a count
    (tmp_path / "second-broken.jsonl").write_text('{"question": "q", "answer": "a"}\n{not json\n')
    assert first_rows(str(tmp_path / "second-broken.jsonl")) is None
    assert load_config("tiny", dataset=str(tmp_path / "second-broken.jsonl")).checked_for_start()


def test_unknown_recipe_field_and_impossible_settings(tmp_path):
    (tmp_path / "r.yaml").write_text("model: smollm2\nlearning_rat: 0.1\n")
    with pytest.raises(LabError, match="Unknown setting.*learning_rat"):
        load_config(tmp_path / "r.yaml")
    (tmp_path / "r.yaml").write_text("model: smollm2\n  max_steps: 3\n")  # a recipe written by hand
    with pytest.raises(LabError, match=r"r\.yaml is not valid YAML at line 2: mapping values are not allowed"):
        load_config(tmp_path / "r.yaml")
    with pytest.raises(LabError, match="stride=128 must be"):
        config_from_dict({"objective": "dapt", "block_size": 64, "stride": 128})
    with pytest.raises(LabError, match=r"^general_windows=0 must be at least 1\.$"):
        config_from_dict({"objective": "dapt", "general_windows": 0})
    with pytest.raises(LabError, match="choose one of"):
        config_from_dict({"adapter": "dora"})
    with pytest.raises(LabError, match=r"^learning_rate=-0.001 must be above 0\.$"):  # torch's traceback, once
        config_from_dict({"learning_rate": "-1e-3"})
    # once cast without a word: 2.5 steps to 2, yes to 1; an infinite rate passed its check
    assert config_from_dict({"max_steps": 2.0, "batch_size": "8"}).max_steps == 2  # a form's number, a YAML string
    for name, value, message in (("max_steps", 2.5, "must be a whole number"), ("max_steps", True, "is not a number"),
                                 ("learning_rate", "inf", "is not a number"), ("epochs", "nan", "is not a number")):
        with pytest.raises(LabError, match=rf"^{name}={re.escape(repr(value))} {message}\.$"):
            config_from_dict({name: value})
    # each failed inside the run (torch's dropout, Trainer's arguments) or, kept 0 checkpoints, broke resume
    for name, value in {"lora_dropout": 1.5, "save_total_limit": 0, "logging_steps": 0, "lora_alpha": 0,
                        "eval_rows": -1, "eval_seconds": -1.0, "max_rows": -5, "eval_steps": -1, "threads": -2,
                        "seed": -5}.items():  # numpy's traceback after the model had loaded
        with pytest.raises(LabError, match=f"^{name}={value} must be "):
            config_from_dict({name: value})



def test_rows_max_length_leaves_no_answer_in_are_counted_and_a_wrong_lora_target_is_one_line(tmp_path, capsys):
    """trl drops a row whose prompt fills max_length: the run says how many, and where that is
    every row, one line says so (it was an IndexError from the empty held-out set). A lora_target
    that names no layer was peft's traceback. max_steps 0 trains for the epochs asked (it ran
    one step at learning rate 0). On the real model and the tiny recipe's rows."""
    from core.runs import RunFolder
    from training import objectives
    from training.fit import prepare, start_trainer

    def trainer(**settings):
        run = RunFolder(tmp_path / str(len(list(tmp_path.iterdir()))))
        run.path.mkdir()
        cfg, tokenizer, train_set, eval_set = prepare(load_config("tiny", **settings), run)
        made = start_trainer(objectives.get("sft"), cfg, run, tokenizer, train_set, eval_set, False, {"flag": False})
        return tokenizer, train_set, made

    by_epochs = trainer(max_steps=0, epochs=0.25)[2]
    per_epoch = len(by_epochs.get_train_dataloader())
    steps = by_epochs.set_initial_training_values(by_epochs.args, by_epochs.get_train_dataloader())[-1]
    assert per_epoch > 4 and steps == math.ceil(0.25 * per_epoch), (steps, per_epoch)  # transformers' own count
    with pytest.raises(LabError, match=r"^max_steps=-2: use a number of steps, or 0 to train for `epochs`\.$"):
        load_config("tiny", max_steps=-2)
    tokenizer, train_set, _ = trainer(max_length=36)
    prompts = [len(tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, return_dict=True)["input_ids"])
               for row in train_set]
    dropped = sum(length >= 36 for length in prompts)
    assert 0 < dropped < len(train_set) and (
        f"note: {dropped} of {len(train_set)} training rows dropped: their prompt fills max_length=36, "
        "leaving no answer to learn.") in capsys.readouterr().out
    with pytest.raises(DataError, match=rf"^max_length={min(prompts)} leaves no answer to learn in any of the "
                                        rf"{len(train_set)} training rows: their prompts fill it\. Raise max_length\.$"):
        trainer(max_length=min(prompts))
    with pytest.raises(LabError, match=r"^lora_target='attn' names no layer of smollm2-135m-instruct: use all-linear"):
        trainer(lora_target="attn")


def test_torch_compile_without_a_compiler_is_refused(tmp_path, monkeypatch):
    assert config_from_dict({"torch_compile": "true"}).torch_compile is True
    monkeypatch.setenv("PATH", str(tmp_path))  # no g++/c++/clang++ on it
    with pytest.raises(LabError, match="torch_compile needs a C\\+\\+ compiler"):
        config_from_dict({"torch_compile": True})


def test_a_wrong_flag_is_refused_before_the_libraries_load(tmp_path):
    """training.run checks its flags, settings and data before it imports training.fit (with
    transformers, peft and trl: 7 s here), and `cli.py chat` its adapter before the model, so a
    typo is one line at once; a setting's flag may be spelled with dashes as the other commands
    spell theirs."""
    import subprocess
    import sys

    from tests.conftest import ROOT
    from training.run import parse_args

    args = parse_args(["--config", "tiny", "--max-steps", "3", "--output-name=dashed", "--run-dir", "x"])
    assert (args.max_steps, args.output_name, args.run_dir) == ("3", "dashed", "x")
    probe = ("import sys; from training.run import main; from cli import main as cli; "
             "codes = main(['--config', 'tiny', '--max-steps', '0', '--epochs', '0']), cli(['chat', '--adapter', 'nope', 'hi']); "
             "print(*codes, sorted({'torch', 'transformers', 'training.fit'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout == "2 2 []\n" and done.stderr == (
        "error: Set max_steps > 0 or epochs > 0.\n"
        "error: Adapter 'nope' is neither a finished run, a folder nor a Hub repo id.\n"), done
