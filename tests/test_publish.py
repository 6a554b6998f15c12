"""Publishing against a local server that speaks the Hub's protocol, with the real client."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from core.hub import publish as hub
from core.hub import space
from core.runs import RunFolder
from tests.conftest import ROOT, free_port
from tests.hub_server import VALID_TOKENS, serve_in_thread

TOKEN = "hf_test_valid_token_abcdefghijklmnop"
LEAK = "hf_LEAKCHECK_7f3a9c2e5b1d8046"


@pytest.fixture(scope="module")
def hub_url():
    port = free_port()
    server = serve_in_thread(port)
    HUB_APPS[f"http://127.0.0.1:{port}"] = server.config.app
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True


HUB_APPS: dict = {}  # hub url -> its app, whose state holds what it received


@pytest.fixture
def endpoint(hub_url, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", hub_url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return hub_url


def in_subprocess(code: str, env: dict) -> str:
    """Run code where huggingface_hub reads HF_ENDPOINT at import, as a fresh process does."""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


LOAD_BACK = """
import json, sys, torch
sys.path.insert(0, '.')
from huggingface_hub import hf_hub_download
from peft import PeftModel
from transformers import AutoModelForCausalLM
from core.inference.models import resolve_model
path = hf_hub_download("tester/lumen-lora", "adapter_model.safetensors")
base = resolve_model("smollm2-135m-instruct")
remote = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), "tester/lumen-lora").eval()
local = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), sys.argv[1]).eval()
ids = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356]])
with torch.no_grad():
    print(json.dumps({"equal": bool(torch.equal(remote(ids).logits, local(ids).logits))}))
"""


@pytest.mark.slow
def test_push_adapter_download_and_load_back(endpoint, tiny_run, data_home):
    url = hub.push_adapter(tiny_run.name, "tester/lumen-lora", TOKEN)
    assert url.endswith("/tester/lumen-lora")
    code = LOAD_BACK.replace("sys.argv[1]", repr(str(tiny_run / "adapter")))
    result = json.loads(in_subprocess(code, {"HF_ENDPOINT": endpoint}).splitlines()[-1])
    assert result["equal"]


def test_model_card_front_matter(tiny_run):
    from huggingface_hub import ModelCard

    card = ModelCard(hub.model_card(RunFolder(tiny_run), "tester/lumen-lora"))
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.library_name == "peft" and "finetune-lab" in card.data.tags
    assert "perplexity" in card.text and "Who are you?" in card.text and "PeftModel" in card.text
    # Offline, the base was the packaged GGUF: the card must not pass it off as the Hub weights.
    assert "Trained on HuggingFaceTB/SmolLM2-135M-Instruct as the SmolLM2-135M-Instruct.Q4_1.gguf file" in card.text
    assert "not the original Hub weights" in card.text


EMBEDDER_BACK = """
import json, sys
sys.path.insert(0, '.')
from sentence_transformers import SentenceTransformer
texts = ["What is AI?", "Who wrote Hamlet?"]
remote = SentenceTransformer("tester/chatterbot-embedder").encode(texts)
local = SentenceTransformer(sys.argv[1]).encode(texts)
print(json.dumps({"equal": bool((remote == local).all())}))
"""


@pytest.mark.slow
def test_push_a_tuned_embedder_as_a_sentence_transformers_model(endpoint, embed_run):
    """The whole model folder (its pooling and normalize modules too) and a card with the
    before/after figures; it loads back from the Hub with SentenceTransformer alone. No Space,
    merge or GGUF: those are for chat models."""
    from huggingface_hub import ModelCard

    from core.errors import LabError
    from training.export_formats import export_run

    hub.push_adapter(embed_run.name, "tester/chatterbot-embedder", TOKEN)
    card = ModelCard(hub.model_card(embed_run, "tester/chatterbot-embedder"))
    assert card.data.library_name == "sentence-transformers" and card.data.pipeline_tag == "sentence-similarity"
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    nmi = next(m for m in embed_run.manifest().held_out if "NMI" in m.label)
    assert nmi.card_row() in card.text and 'SentenceTransformer("tester/chatterbot-embedder")' in card.text
    script = EMBEDDER_BACK.replace("sys.argv[1]", repr(str(embed_run.adapter)))
    assert json.loads(in_subprocess(script, {"HF_ENDPOINT": endpoint, "HF_TOKEN": TOKEN}))["equal"]
    with pytest.raises(LabError, match="tuned embedder"):
        space.push_space(embed_run.name, "tester/embedder-space", "tester/chatterbot-embedder", TOKEN)
    with pytest.raises(LabError, match="nothing to merge"):
        export_run(embed_run.name, "gguf")


def test_space_pins_come_from_requirements():
    files = space.space_files("tester/x", "base/model", True)
    pinned = {line for line in (ROOT / "requirements.txt").read_text().splitlines() if "==" in line}
    assert set(files["requirements.txt"].split()) - {"safetensors"} <= pinned
    gradio = next(line for line in pinned if line.startswith(("gradio==", "gradio[oauth]==")))
    assert f"sdk_version: {gradio.split('==')[1]}" in files["README.md"]


@pytest.mark.slow
def test_space_is_created_and_its_app_builds(endpoint, tiny_run, hub_url):
    hub.push_adapter(tiny_run.name, "tester/space-lora", TOKEN)
    url = space.push_space(tiny_run.name, "tester/lumen-compare", "tester/space-lora", TOKEN)
    assert "/spaces/tester/lumen-compare" in url
    code = """
import importlib.util, json, sys
from huggingface_hub import HfApi, hf_hub_download
files = sorted(s.rfilename for s in HfApi().space_info("tester/lumen-compare").siblings)
readme = open(hf_hub_download("tester/lumen-compare", "README.md", repo_type="space")).read()
app_path = hf_hub_download("tester/lumen-compare", "app.py", repo_type="space")
spec = importlib.util.spec_from_file_location("space_app", app_path)
space = importlib.util.module_from_spec(spec); spec.loader.exec_module(space)
demo = space.build_demo()
base, tuned = space.answer_both("Who are you?")
print(json.dumps({"files": files, "readme": readme, "blocks": type(demo).__name__, "base": base, "tuned": tuned}))
"""
    sys.path.insert(0, str(ROOT))
    from core.inference.models import resolve_model

    env = {"HF_ENDPOINT": endpoint, "BASE_MODEL": resolve_model("smollm2-135m-instruct")}
    out = json.loads(in_subprocess(code, env).splitlines()[-1])
    assert out["files"] == ["README.md", "app.py", "log_budget.py", "requirements.txt"]
    assert "sdk: gradio" in out["readme"] and "app_file: app.py" in out["readme"]
    assert "tester/space-lora" in out["readme"] and out["blocks"] == "Blocks"
    assert out["base"] != out["tuned"] and "Lumen" in out["tuned"]


@pytest.mark.slow
def test_space_app_continues_text_for_a_base_model_without_chat_template(tmp_path):
    """A Gemma-base adapter's Space: no chat template, so both sides continue the text."""
    import importlib.util

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from core.inference.models import resolve_model

    base_path = resolve_model("gemma-3-270m")
    adapter = tmp_path / "adapter"
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(base_path), config).save_pretrained(adapter)
    (tmp_path / "app.py").write_text(space.space_files(str(adapter), base_path, True)["app.py"])
    spec = importlib.util.spec_from_file_location("gemma_space_app", tmp_path / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    messages = [{"role": "user", "content": "The Eiffel Tower is located in the city of"}]
    base, tuned = (list(app.stream(side, messages, max_new_tokens=6))[-1] for side in ("base", "tuned"))
    assert "Paris" in base and tuned != base


@pytest.mark.slow
def test_pushing_twice_updates(endpoint, tiny_run):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=TOKEN)
    hub.push_adapter(tiny_run.name, "tester/twice", TOKEN)
    first = api.model_info("tester/twice").sha
    hub.push_adapter(tiny_run.name, "tester/twice", TOKEN)
    assert api.model_info("tester/twice").sha != first


@pytest.mark.parametrize("repo, token, message", [
    ("tester/x", "", "No Hugging Face token"),
    ("tester/x", "hf_wrong", "token was rejected"),
    ("../etc/passwd", TOKEN, "Invalid repo name"),
    ("tester/bad name", TOKEN, "Invalid repo name"),
    ("someone-else/their-model", TOKEN, "belongs to someone else"),
])
def test_clear_one_line_errors(endpoint, tiny_run, repo, token, message):
    with pytest.raises(hub.HubError, match=message) as info:
        hub.push_adapter(tiny_run.name, repo, token)
    assert "\n" not in str(info.value) and (not token or token not in str(info.value))


def test_unreachable_hub(monkeypatch, tiny_run):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(hub.HubError, match=r"^The Hugging Face Hub is unreachable \(\w+\)\.$"):
        hub.push_adapter(tiny_run.name, "tester/x", TOKEN)


@pytest.mark.slow
def test_token_never_leaks(hub_url, tiny_run, data_home, tmp_path):
    """Publish through the real app with a recognisable token; it must appear nowhere."""
    from gradio_client import Client

    from tests.conftest import ARTIFACTS, start_app

    assert LEAK in VALID_TOKENS
    hf_home = tmp_path / "hf-home"
    proc, url = start_app(env={"HF_ENDPOINT": hub_url, "HF_HOME": str(hf_home)})
    outputs = []
    try:
        client = Client(url, verbose=False)
        outputs.append(client.predict(tiny_run.name, "tester/leak-check", False, LEAK, api_name="/publish_adapter"))
        outputs.append(client.predict(tiny_run.name, "tester/leak-space", "tester/leak-check", False, LEAK, "",
                                      api_name="/publish_space"))
        outputs.append(client.predict(tiny_run.name, "someone-else/their-model", False, LEAK,
                                      api_name="/publish_adapter"))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert outputs[0].startswith("✅") and outputs[1].startswith("✅") and outputs[2].startswith("⚠️")
    for text in outputs:
        assert LEAK not in text
    received = [(f"hub:{repo}/{path}", data) for repo, info in HUB_APPS[hub_url].state.repos.items()
                for path, data in info["files"].items()]
    assert any("leak-space" in name for name, _ in received), "the Space reached the Hub"
    repos = HUB_APPS[hub_url].state.repos
    assert repos[("space", "tester/leak-space")]["secrets"] == {"HF_TOKEN": LEAK}, "the one place it goes: a secret"
    assert ("dataset", "tester/leak-space-votes") in repos and repos[("dataset", "tester/leak-space-votes")]["private"]
    gradio_temp = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")
    on_disk = [(str(p), p.read_bytes()) for folder in (data_home, ARTIFACTS, hf_home, gradio_temp)
               for p in folder.rglob("*") if p.is_file()]
    scanned = 0
    for name, data in received + on_disk:
        scanned += 1
        assert LEAK.encode() not in (data if isinstance(data, bytes) else str(data).encode()), f"token in {name}"
    assert scanned > 10
    with pytest.raises(hub.HubError) as info:
        hub.push_adapter(tiny_run.name, "someone-else/their-model", LEAK)
    assert LEAK not in str(info.value) and LEAK not in repr(info.value)


@pytest.mark.slow
def test_push_gguf_export_with_a_gguf_card(endpoint, tiny_run):
    """`--what gguf-q4_0` exports first when needed, then pushes the file, its Modelfile (and its
    parity.json, when the export was checked) and a card whose library_name and tags say GGUF
    and the tensor type."""
    from huggingface_hub import HfApi, ModelCard

    done = subprocess.run([sys.executable, "cli.py", "publish", "--run", tiny_run.name, "--repo", "tester/lumen-gguf",
                           "--what", "gguf-q4_0"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_ENDPOINT": endpoint, "HF_TOKEN": TOKEN})
    assert done.returncode == 0, done.stderr[-2000:]
    info = HfApi(endpoint=endpoint, token=TOKEN).model_info("tester/lumen-gguf")
    files = {sibling.rfilename for sibling in info.siblings}
    checked = (RunFolder(tiny_run).gguf_dir("q4_0") / "parity.json").is_file()  # the app's export checked it
    assert files == {"README.md", "Modelfile", f"{tiny_run.name}-q4_0.gguf"} | ({"parity.json"} if checked else set())
    card = ModelCard(hub.model_card(RunFolder(tiny_run), "tester/lumen-gguf", "gguf-q4_0"))
    assert card.data.library_name == "gguf" and {"gguf", "q4_0", "finetune-lab"} <= set(card.data.tags)
    assert f'gguf_file="{tiny_run.name}-q4_0.gguf"' in card.text and "ollama run hf.co/tester/lumen-gguf" in card.text


def test_merged_card_says_transformers(tiny_run):
    from huggingface_hub import ModelCard

    from training.export_formats import ensure_export

    ensure_export(tiny_run.name, "merged")
    card = ModelCard(hub.model_card(RunFolder(tiny_run), "tester/lumen-merged", "merged"))
    assert card.data.library_name == "transformers" and "merged" in card.data.tags
    assert "AutoModelForCausalLM.from_pretrained(\"tester/lumen-merged\")" in card.text and "Peft" not in card.text


def test_push_refuses_an_unknown_or_missing_export(endpoint, tiny_run):
    with pytest.raises(hub.HubError, match="choose adapter, merged or gguf-<type>"):
        hub.push_adapter(tiny_run.name, "tester/x", TOKEN, what="../adapter")
    with pytest.raises(hub.HubError, match="has no gguf-f32 export yet: export it first"):
        hub.push_adapter(tiny_run.name, "tester/x", TOKEN, what="gguf-f32")
