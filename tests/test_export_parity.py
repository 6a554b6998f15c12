"""Export parity on the tiny run's GGUFs (training/export_parity.py): the f16 file answers as the
merged model does, read by transformers' GGUF loader (what the default install has) and, where
the optional llama-cpp-python is installed, by llama.cpp; a wrong chat template is caught.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import LabError
from tests.conftest import ROOT


WRONG_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                  "{% if add_generation_prompt %}assistant:{% endif %}")


@pytest.mark.slow
def test_export_parity_on_f16_and_a_wrong_template_caught(smol_exports, tiny_run, data_home, monkeypatch):
    """The f16 GGUF answers every prompt as the merged model does; a GGUF written with a wrong
    chat template is caught by the template diff (the GGUF's and the Modelfile's, which then
    has no TEMPLATE of its own)."""
    from core.runs import RunFolder
    from training.config import load_config
    from training.export_parity import template_check
    from training.gguf_export import export_gguf
    from training.gguf_runtime import TRANSFORMERS
    from training.model_setup import load_tokenizer

    monkeypatch.setenv("FINETUNE_LAB_GGUF_RUNTIME", "transformers")  # what a default install has
    done = subprocess.run([sys.executable, "cli.py", "export", "--run", tiny_run.name, "--format", "gguf",
                           "--quant", "f16", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((smol_exports["f16"].folder / "parity.json").read_text())
    assert done.stdout.splitlines()[1] == result["verdict"] and "parity: " in done.stderr
    assert result["runtime"] == TRANSFORMERS
    merged = result["pairs"]["merged vs gguf"]
    assert merged["identical"] == merged["of"] == result["prompts"] >= 5, result  # the distinct held-out and report prompts
    assert merged["forced_agreement"] == 1.0 and result["template"] == {"gguf": None, "modelfile": None}
    adapter = result["pairs"]["adapter vs gguf"]
    assert result["verdict"].startswith(f"f16 in transformers GGUF loader: {adapter['identical']}/{result['prompts']} "
                                        "prompts identical to the adapter")
    assert result["verdict"].endswith("; template identical")

    broken = RunFolder(data_home / "runs" / "tiny-wrong-template")
    shutil.copytree(tiny_run, broken.path, ignore=shutil.ignore_patterns("gguf-*", "checkpoints"))
    (broken.merged / "chat_template.jinja").write_text(WRONG_TEMPLATE)
    config = json.loads((broken.merged / "tokenizer_config.json").read_text())
    if "chat_template" in config:
        (broken.merged / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": WRONG_TEMPLATE}))
    export = export_gguf(broken.name, "f16")
    tokenizer = load_tokenizer(load_config(broken.config).model)
    caught = template_check(tokenizer, next(export.folder.glob("*.gguf")))
    assert caught["gguf"] is not None and caught["modelfile"] == caught["gguf"], caught
    shutil.rmtree(broken.path)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="llama-cpp-python is an optional extra (requirements-llamacpp.txt)")
def test_export_parity_in_llama_cpp(smol_exports, tiny_run):
    """Where llama-cpp-python is installed it reads the GGUF by default: on its own kernels the
    f16 file still answers every prompt as the merged model does, and its tokenizer turns the
    rendered conversation into the same ids."""
    from training.export_parity import check_parity

    result = check_parity(tiny_run.name, "f16")
    assert result["runtime"].startswith("llama.cpp (llama-cpp-python "), result["runtime"]
    merged = result["pairs"]["merged vs gguf"]
    assert merged["identical"] == merged["of"] == result["prompts"] and merged["forced_agreement"] == 1.0, result
    assert result["template"] == {"gguf": None, "modelfile": None, "llama.cpp tokenizer": None}
    assert result["verdict"].startswith("f16 in llama.cpp: ") and result["verdict"].endswith("; template identical")


def test_gguf_runtime_choice_is_checked(monkeypatch):
    from training.gguf_runtime import gguf_runner, llama_cpp_installed

    monkeypatch.setenv("FINETUNE_LAB_GGUF_RUNTIME", "ollama")
    with pytest.raises(LabError, match="FINETUNE_LAB_GGUF_RUNTIME='ollama' is not one of: auto, llama.cpp, transformers"):
        gguf_runner(Path("x.gguf"), set())
    monkeypatch.setenv("FINETUNE_LAB_GGUF_RUNTIME", "llama.cpp")
    if not llama_cpp_installed():
        with pytest.raises(LabError, match="llama-cpp-python is not installed: pip install -r requirements-llamacpp.txt"):
            gguf_runner(Path("x.gguf"), set())


def test_the_answers_that_part_are_shown_side_by_side():
    from training.export_parity import side_by_side

    result = {"pairs": {"adapter vs gguf": {"partings": [None, 3]}},
              "answers": [{"prompt": "Hi", "adapter": "Hello!", "gguf": "Hello!"},
                          {"prompt": "Who | are you?", "adapter": "I am Lumen.\nHi", "gguf": "I am Lu."}]}
    assert side_by_side(result).splitlines() == ["| prompt | parts at token | adapter | GGUF |", "|---|---|---|---|",
                                                 "| Who \\| are you? | 3 | I am Lumen. Hi | I am Lu. |"]
    assert side_by_side({**result, "pairs": {"adapter vs gguf": {"partings": [None, None]}}}) == ""
