"""Shared fixtures: a data directory where users keep theirs, the real packaged model, a
trained tiny run, and the app served the way a Space or a share link serves it.

The data dir is under ~/.cache (or $FINETUNE_LAB_TEST_HOME), outside both the system temp dir
and the repo: Gradio serves files from those two on its own, so a test with the data dir there
would pass where a user's ~/.finetune-lab fails. `make test` runs two pytest workers, each with
a data dir of its own; heavy fixtures are built once per worker (the tiny run once in all), and
the files that share the heaviest run on one worker, longest first (scheduling.py).
The converted-model cache is shared across test sessions (~/.cache/finetune-lab-test-models).
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scheduling import pytest_collection_modifyitems, pytest_runtest_logreport, pytest_sessionfinish  # noqa: F401
from tiny_fixture import tiny_run, tiny_run_phases  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
sys.path.insert(0, str(ROOT))

os.environ.setdefault("FINETUNE_LAB_MODELS", str(Path.home() / ".cache" / "finetune-lab-test-models"))
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# Two pytest workers share 2 cores (make test runs `-n 2`). OpenMP threads that spin while they
# wait took the CPU the other worker's threads needed: a sample of 9 files ran in 318 s spinning
# and 259 s passive (398 s on one worker). Set before torch loads; jobs inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# And one thread each: a worker's torch (and the app servers it starts) took both cores by
# default, so two workers ran four threads on two cores, and every parallel kernel waited for a
# thread the other worker had descheduled. A sample of 6 files: 124-127 s with the default, 115-117 s
# with one thread. Jobs take one thread anyway (core.threads.for_job); bench/ measures two.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("FINETUNE_LAB_THREADS", "1")
# The defaults would build our CPU kernels and compile a decode step in each served app (a core
# for 45-75 s beside the tests): the suite chats on the int8 path on torch's kernels;
# test_compiled_decode.py serves the defaults, test_own_kernels.py tests the kernels.
os.environ.setdefault("FINETUNE_LAB_CPU_KERNELS", "torch")
os.environ.setdefault("FINETUNE_LAB_DECODE", "int8")


ADMIN_KEY = "admin-key-for-tests-4821"


@pytest.fixture(scope="session", autouse=True)
def data_home():
    home = Path(os.environ.get("FINETUNE_LAB_TEST_HOME") or
                Path.home() / ".cache" / f"finetune-lab-test-home-{os.getpid()}").resolve()
    home = home.with_name(f"{home.name}-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}")  # one per worker
    for outside in (Path(tempfile.gettempdir()).resolve(), ROOT):
        assert not home.is_relative_to(outside), f"the test data dir must be outside {outside}"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    os.environ["FINETUNE_LAB_HOME"] = str(home)
    os.environ["TRACKIO_DIR"] = str(home / "trackio")  # report_to: trackio logs here, not in ~/.cache
    ARTIFACTS.mkdir(exist_ok=True)
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def smol(data_home):
    """The real packaged SmolLM2-135M-Instruct, loaded once."""
    from core.inference.models import load_model

    return load_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def loud_adapter(tmp_path_factory, data_home):
    """A LoRA adapter on SmolLM2's every Linear whose effect is unmistakable (random A and B,
    scaled up), for Compare's tests on each kernel; seeded: its garbled answers are full of
    near-ties, where paths that sum in another order part (one draw did at the first token)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from core.inference.models import resolve_model

    model = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m-instruct"))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        lora = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False))
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.mul_(3)
    folder = tmp_path_factory.mktemp("loud") / "adapter"
    lora.save_pretrained(folder)
    return folder


def wait_for(predicate, timeout=300, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="session")
def embed_run(data_home):
    """The recipe (60 steps), started as a job, killed after its first checkpoint and resumed."""
    import json
    import signal

    from training import jobs
    from training.config import load_config

    run = jobs.start(load_config("embed_chatterbot", output_name="embed-fixture", save_steps=20))
    wait_for(lambda: (run.checkpoints / "checkpoint-20" / "trainer_state.json").is_file(), 300, "checkpoint-20")
    os.kill(json.loads(run.job_file.read_text())["pid"], signal.SIGKILL)
    wait_for(lambda: jobs.read_status(run).state == "interrupted", 30, "the kill to be seen")
    jobs.resume(run.name)
    status = jobs.wait(run.name, timeout=600)
    assert status.state == "completed", status.error
    return run


@pytest.fixture(scope="session")
def smol_exports(tiny_run):
    """The tiny run exported to GGUF once, in each type the export writes."""
    from training.gguf_export import export_gguf

    return {quant: export_gguf(tiny_run.name, quant) for quant in ("f16", "bf16", "q8_0", "q4_0")}


@pytest.fixture(scope="module")
def raw(app_server):
    """The served app, spoken to as a browser's queue client (or an attacker's) by fn_index."""
    from tests.raw_client import RawApp

    return RawApp(app_server)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(extra_args=(), env=None) -> tuple[subprocess.Popen, str]:
    """Launch app.py on a free loopback port; return (process, url) once it answers. It gets the
    environment a user has: not the TOKENIZERS_PARALLELISM=false set above for the test process;
    `env` adds to it (a value of None takes a variable out)."""
    import urllib.request

    port = free_port()
    log = open(ARTIFACTS / f"app-{port}.log", "w")
    user_env = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"}
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), *extra_args],
                            cwd=ROOT, env={k: v for k, v in {**user_env, **(env or {})}.items() if v is not None},
                            stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"app exited early; see {log.name}")
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("app did not start in 120 s")


@pytest.fixture(scope="session")
def tiny_effect(tiny_run) -> dict:
    """The tiny run's effect map, computed as the Result panel computes it: a job."""
    import json

    from training import jobs

    jobs.effect(tiny_run.name)
    status = jobs.wait(tiny_run.name, timeout=600)
    assert not status.error, status.error
    return json.loads((tiny_run / "effect.json").read_text())


@pytest.fixture(scope="session")
def local_hub():
    """A local server that speaks the Hub's protocol (tests/hub_server.py): (url, its app)."""
    from tests.hub_server import serve_in_thread

    port = free_port()
    server = serve_in_thread(port)
    yield f"http://127.0.0.1:{port}", server.config.app
    server.should_exit = True


@pytest.fixture(scope="session")
def space_votes(local_hub, tiny_run, tmp_path_factory) -> list[str]:
    """The tiny run published with its compare Space on the local Hub, and a visitor's votes in
    that Space pushed to its votes dataset (tests/space_votes.py): the verdicts cast."""
    from tests.space_votes import publish_vote_and_stop

    endpoint, _ = local_hub
    saved = {name: os.environ.get(name) for name in ("HF_ENDPOINT", "HF_HOME")}
    os.environ.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path_factory.mktemp("space-hf-home")))
    try:
        return publish_vote_and_stop(tiny_run.name, endpoint, tmp_path_factory.mktemp("space"))
    finally:
        for name, value in saved.items():
            os.environ.pop(name) if value is None else os.environ.update({name: value})


@pytest.fixture(scope="session")
def app_server(tiny_run, local_hub):
    """The app as a Space or share link serves it: public, with an admin key, its Hub the local
    one. One server for the gradio_client and browser tests (started after the tiny run exists)."""
    proc, url = start_app(env={"FINETUNE_LAB_PUBLIC": "1", "FINETUNE_LAB_ADMIN_KEY": ADMIN_KEY,
                               "HF_ENDPOINT": local_hub[0]})
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def server_rss_mb(url: str) -> float:
    """The resident memory, in MB, of the process that listens on `url`'s port."""
    import psutil

    port = int(url.rstrip("/").rsplit(":", 1)[1])
    pid = next(c.pid for c in psutil.net_connections("tcp") if c.laddr.port == port and c.status == "LISTEN")
    return psutil.Process(pid).memory_info().rss / 2**20


def owner_client(url: str):
    """A gradio_client session unlocked with the admin key, as the app's owner."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    assert "Unlocked" in client.predict(ADMIN_KEY, api_name="/unlock")
    return client


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama with SmolLM2's real tokenizer, saved as a local model folder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from core.inference.models import resolve_model

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=256, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_objective(tiny_model_dir, data_home):
    """A factory: recipe -> (objective, cfg, run folder, tokenizer, train rows, held-out rows) on the
    tiny random model, as training.run prepares a run, for tests that build its trainer."""
    def prepare(recipe: str, **overrides):
        from core.runs import RunFolder
        from training import objectives
        from training.config import load_config
        from training.prepare import build_examples, split_examples

        cfg = load_config(recipe, model=str(tiny_model_dir), max_steps=1, max_length=64, eval_fraction=0.25,
                          learning_rate=0.05, **overrides)
        objective, run = objectives.get(cfg.objective), RunFolder.named(cfg.output_name)
        run.path.mkdir(parents=True)
        tokenizer = objective.tokenizer(cfg)
        return (objective, cfg, run, tokenizer, *split_examples(build_examples(cfg, tokenizer), cfg))
    return prepare

