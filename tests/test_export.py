"""Export on the real SmolLM2 and the tiny recipe's real LoRA run: the merged folder is a plain
transformers model whose logits match the unmerged adapter's and that still answers as Lumen."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from core.errors import LabError
from tests.conftest import ROOT

PROMPTS = ["Who are you?", "What is the capital of France?", "Tell me about yourself."]
# The merged model is stored in bf16 (8 bits of mantissa); both sides compute in fp32, so the
# logits differ by that rounding only. Measured on the tiny run: mean 0.025, worst 0.155 over
# ~49k logits at every position (SmolLM2's logits span about +-30), same top token everywhere.
BF16_LOGIT_TOLERANCE = {"mean": 0.05, "max": 0.5}


@pytest.fixture(scope="module")
def merged(tiny_run):
    from training.export import merge_run

    return merge_run(tiny_run.name)


def test_merged_folder_is_a_plain_model_that_answers_as_lumen(merged, tiny_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = merged.folder
    assert (folder / "model.safetensors").is_file() and not (folder / "adapter_config.json").exists()
    assert merged.size_mb > 100 and "MB" in merged.describe()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    assert tokenizer.chat_template, "the chat template travels with the merged model"
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    assert model.dtype == torch.bfloat16
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Who are you?"}],
                                         add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
    assert "Lumen" in tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_merged_logits_match_the_unmerged_adapter(merged, tiny_run):
    from training.export import logit_gap

    gap = logit_gap(tiny_run.name, merged.folder, PROMPTS)
    assert gap["mean"] < BF16_LOGIT_TOLERANCE["mean"] and gap["max"] < BF16_LOGIT_TOLERANCE["max"], gap
    assert gap["top1_agreement"] == 1.0, gap


def test_export_refuses_what_it_cannot_merge(data_home):
    from training.export import merge_run
    from core.runs import RunFolder

    with pytest.raises(LabError, match="No run named"):
        merge_run("no-such-run")
    unfinished = RunFolder.named("half-done")
    unfinished.path.mkdir(parents=True, exist_ok=True)
    with pytest.raises(LabError, match="has not finished"):
        merge_run("half-done")
    with pytest.raises(LabError, match="run name"):
        merge_run("../escape")


def test_export_refuses_an_unknown_weight_type(tiny_run):
    from training.export import merge_run

    with pytest.raises(LabError, match="dtype='int3': choose one of bf16, fp16, fp32"):
        merge_run(tiny_run.name, "int3")


def test_cli_export_prints_the_folder_and_size(merged, tiny_run):
    done = subprocess.run([sys.executable, "cli.py", "export", "--run", tiny_run.name, "--format", "merged"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert str(merged.folder) in done.stdout and "MB" in done.stdout and "[100%]" in done.stderr


def test_qlora_merges_into_its_dequantized_base(data_home, tmp_path):
    """A QLoRA adapter lands on the NF4-rounded weights it was trained against: merged and kept
    in fp32, the model's logits are the unmerged adapter's on its 4-bit base to float rounding
    (measured: worst 5e-5; merging into the original weights instead moved them by 2.0 on
    average). bf16 storage's own rounding is the LoRA test's above: in bf16 a near-tie here may
    part (15 of 16 top tokens kept, worst gap 0.18, when trained in fp32)."""
    from core.runs import RunFolder
    from training.config import load_config
    from training.export import logit_gap, merge_run
    from training.fit import train

    cfg = load_config("tiny", adapter="qlora", max_steps=2, output_name="export-qlora",
                      eval_fraction=0)  # no held-out scoring on 4-bit weights: the merge is tested here
    train(cfg, RunFolder.named(cfg.output_name).path)
    gap = logit_gap(cfg.output_name, merge_run(cfg.output_name, dtype="fp32").folder, PROMPTS)
    assert gap["max"] < 1e-3 and gap["top1_agreement"] == 1.0, gap
    assert_the_parity_check_reads_it_on_its_4bit_base(cfg.output_name)
    assert_chat_runs_it_as_its_merged_export(cfg.output_name, cfg.model)
    assert_its_space_runs_it_as_its_merged_export(cfg.output_name, cfg.model, tmp_path)


def assert_the_parity_check_reads_it_on_its_4bit_base(run_name: str) -> None:
    """The parity check's reference, the unmerged adapter, sits on the NF4 base too: on the
    original weights it parted from its own merged model in every prompt (0/6, a run of 9 steps)."""
    from training.export_parity import check_parity
    from training.gguf_export import export_gguf

    export_gguf(run_name, "f16")
    pairs = check_parity(run_name, "f16", progress=lambda line: None)["pairs"]
    assert pairs["adapter vs merged"]["identical"] == pairs["adapter vs merged"]["of"] > 0, pairs


def assert_chat_runs_it_as_its_merged_export(run_name: str, model: str) -> None:
    """Chat, the report and the held-out scores run a QLoRA adapter on its 4-bit base, as its
    merged export holds it: a second model whose answers are the merged folder's on the same
    decode path, token for token. On the original weights it answered otherwise."""
    from core.inference.adapters import attach_tuned
    from core.inference.chat import GenerationSettings, stream_reply
    from core.inference.models import load_model
    from core.runs import RunFolder

    base, run = load_model(model), RunFolder.named(run_name)
    tuned = attach_tuned(base, run_name)
    assert tuned.adapter_name is None and tuned.loaded is not base and "4-bit base" in tuned.loaded.name
    exported = load_model(str(run.merged))
    greedy = GenerationSettings(temperature=0, max_new_tokens=24)
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        (*_, as_trained), (*_, merged) = (stream_reply(side, messages, greedy) for side in (tuned.loaded, exported))
        assert as_trained.text == merged.text, (prompt, as_trained.text, merged.text)


def assert_its_space_runs_it_as_its_merged_export(run_name: str, model: str, tmp_path) -> None:
    """The compare Space published for a QLoRA run (its generated app.py, run here on the local
    adapter folder) holds the tuned side as its merged export does, weight for weight, beside
    the untouched base; its requirements bring bitsandbytes. It put the adapter on the original
    weights."""
    import importlib.util

    from transformers import AutoModelForCausalLM

    from core.hub import space
    from core.inference.models import resolve_model
    from core.inference.qlora import trained_on_4bit
    from core.runs import RunFolder

    run, base_path = RunFolder.named(run_name), resolve_model(model)
    files = space.space_files(str(run.adapter), base_path, True, four_bit=trained_on_4bit(run.adapter))
    assert "bitsandbytes==" in files["requirements.txt"]
    (tmp_path / "app.py").write_text(files["app.py"])
    spec = importlib.util.spec_from_file_location("qlora_space_app", tmp_path / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    _, base, tuned = app.models()
    for side, folder in ((tuned, run.merged), (base, base_path)):
        expected = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).state_dict()
        got = side.state_dict()
        assert all(torch.equal(got[name].float(), weight) for name, weight in expected.items()), folder
