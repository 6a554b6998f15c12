"""Load benchmark of the public app: honest visitors beside hostile ones, against the same
honest visitors alone.

    .venv/bin/python bench/bench_public.py [--visitors 20] [--seconds 120] [--baseline-seconds 60]

Launches `app.py` public (an admin key, the data dir in a temporary folder or --home, the models
cache $FINETUNE_LAB_MODELS or ~/.finetune-lab/models),
behind a stand-in proxy (FINETUNE_LAB_BEHIND_PROXY=1), so each simulated visitor comes from an
address of its own through X-Forwarded-For, as on a Space. Each honest visitor has its own
session and, until time runs out, waits a human's 10-30 s (reading the last answer, typing the
next question; with 4-12 s, 20 visitors alone asked more than two cores answer: in git, BENCHMARKS.md) and
then does one of: chat (single),
Compare with the newest finished run if there is one, a data preview, topics on a small upload,
or a thumb on the answer it was just given. Two hostile visitors run at the same time: one sends
the memory bombs (a 12 MB chat history, a 42 MB upload of one-line documents to embed, a
classification with thousands of labels), one fills the queue from fresh session ids and forges
votes. The baseline phase runs the same honest visitors with no hostile ones.

The last line is one JSON object: peak server RSS, the honest visitors' p50/p95 time to first
token in both phases and the ratio of the p95s (what the attackers cost), how much of their chats'
p50/p95 wait was in Gradio's queue before the handler started (`queue_wait_*`: the rest is the
answer's batch and prompt), their errors, and how
many hostile calls were refused. Targets (issue 27): peak RSS < 4 GB, no honest visitor refused
or failed, p95 time to first token < 10 s on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ADMIN_KEY = "bench-admin-key-4821"


class Visitor:
    """One browser: a session, an address, and a client that speaks Gradio's queue protocol."""

    def __init__(self, url: str, config: dict, address: str):
        self.url, self.config, self.session = url, config, uuid.uuid4().hex[:11]
        self.http = httpx.Client(timeout=120, headers={"x-forwarded-for": address})

    def fn(self, api_name: str = "", elem_id: str = "", event: str = "") -> int:
        ids = {c["id"]: c.get("props", {}).get("elem_id") for c in self.config["components"]}
        for dep in self.config["dependencies"]:
            if api_name and dep.get("api_name") == api_name:
                return dep["id"]
            if elem_id and any(ids.get(t[0]) == elem_id and t[1] == event for t in dep["targets"]):
                return dep["id"]
        raise KeyError(api_name or elem_id)

    def call(self, fn_index: int, data: list, event_data=None, session: str | None = None) -> dict:
        """Run one event; returns {"ok", "status", "first_token_s", "queue_s", "data", "error"}
        (`queue_s`: until Gradio's queue started the handler)."""
        session, start = session or self.session, time.perf_counter()
        body = {"data": data, "fn_index": fn_index, "session_hash": session, "event_data": event_data}
        joined = self.http.post(self.url + "gradio_api/queue/join", json=body)
        if joined.status_code != 200:
            return {"ok": False, "status": joined.status_code, "first_token_s": None, "queue_s": None, "data": None,
                    "error": joined.text[:200]}
        event_id, first, started = joined.json()["event_id"], None, None
        with self.http.stream("GET", self.url + "gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                message = json.loads(line[5:]) if line.startswith("data:") else {}
                if message.get("event_id") != event_id:
                    continue
                if message.get("msg") == "process_starts" and started is None:
                    started = time.perf_counter() - start
                if message.get("msg") == "process_generating" and first is None:
                    first = time.perf_counter() - start
                if message.get("msg") == "process_completed":
                    output = message.get("output") or {}
                    return {"ok": bool(message.get("success")) and "error" not in output, "status": 200,
                            "first_token_s": first or time.perf_counter() - start, "queue_s": started,
                            "data": output.get("data"), "error": output.get("error")}
        return {"ok": False, "status": 200, "first_token_s": None, "queue_s": None, "data": None, "error": "stream ended"}


CHAT = ["", [], [], "smollm2-135m-instruct", None, "Single", "", 0.0, 0.9, 48, 1.1, False, None, None]
QUESTIONS = ["What is the capital of France?", "Give me a tip for learning Python.", "Name three fruits.",
             "What is fine-tuning?", "Write a haiku about the sea.", "Who are you?"]


def honest(visitor: Visitor, until: float, adapter: str | None, upload_path: Path, stats: dict) -> None:
    rng = random.Random(visitor.session)
    while time.time() < until:
        time.sleep(rng.uniform(10, 30))
        if time.time() >= until:
            return
        action = rng.choice(["chat", "chat", "compare", "preview", "topics", "vote"])
        if action == "compare" and not adapter:
            action = "chat"
        question = rng.choice(QUESTIONS)
        if action in ("chat", "compare", "vote"):
            mode = ["Compare", adapter] if action == "compare" else ["Single", None]
            data = [question, *CHAT[1:4], mode[1], mode[0], *CHAT[6:]]
            result = visitor.call(visitor.fn("chat"), data)
            if result["ok"]:
                stats["ttft"].append(result["first_token_s"])
                stats["queue"].append(result["queue_s"] or 0.0)
            if action == "vote" and result["ok"]:
                result = visitor.call(visitor.fn(elem_id="base-chat", event="like"), [None, False],
                                      {"index": 1, "value": "", "liked": True})
        elif action == "preview":
            result = visitor.call(visitor.fn("data_inspect"), ["identity", ""])
        else:
            sent = visitor.http.post(visitor.url + "gradio_api/upload",
                                     files={"files": (upload_path.name, upload_path.read_bytes())}).json()[0]
            file = {"path": sent, "orig_name": upload_path.name, "meta": {"_type": "gradio.FileData"}}
            result = visitor.call(visitor.fn("topics"), ["guardian-headlines", file, "", "", 300,
                                                         "all-MiniLM-L6-v2", "fast", 8])
        text = json.dumps(result["data"]) + str(result["error"])
        failed = not result["ok"] or "⚠" in text and "already voted" not in text
        stats["calls"] += 1
        stats["errors"] += failed
        if failed and len(stats["samples"]) < 5:
            stats["samples"].append(f"{action}: {text[:160]}")


def hostile_memory(url: str, config: dict, until: float, bomb: Path, stats: dict) -> None:
    """The memory bombs, over and over, each from a fresh session."""
    history = [{"role": "user", "content": [{"type": "text", "text": "hi there"}]}] * 200_000
    while time.time() < until:
        visitor = Visitor(url, config, "10.66.0.1")
        sent = visitor.http.post(url + "gradio_api/upload", files={"files": (bomb.name, bomb.read_bytes())})
        file = {"path": sent.json()[0], "orig_name": bomb.name, "meta": {"_type": "gradio.FileData"}} \
            if sent.status_code == 200 else None
        calls = [(visitor.fn("chat"), ["Hi", history, *CHAT[2:]]),
                 (visitor.fn("embed"), ["guardian-headlines", file, "", "", 10, "all-MiniLM-L6-v2"]),
                 (visitor.fn("classify"), ["guardian-headlines", None, "", "Text", 2000, "all-MiniLM-L6-v2",
                                           "logreg"])]
        for index, data in calls:
            result = visitor.call(index, data)
            text = json.dumps(result["data"]) + str(result["error"])
            stats["calls"] += 1
            stats["refused"] += result["status"] != 200 or "at most" in text or "**10 documents**" in text


def hostile_queue(url: str, config: dict, until: float, stats: dict) -> None:
    """Fresh session ids, each queueing chats, and thumbs on answers never given."""
    visitor = Visitor(url, config, "10.66.0.2")
    chat, like = visitor.fn("chat"), visitor.fn(elem_id="base-chat", event="like")
    while time.time() < until:
        for _ in range(24):
            body = {"data": ["Count to fifty.", *CHAT[1:9], 256, *CHAT[10:]], "fn_index": chat,
                    "session_hash": uuid.uuid4().hex[:11]}
            status = visitor.http.post(url + "gradio_api/queue/join", json=body).status_code
            stats["calls"] += 1
            stats["refused"] += status != 200
        for _ in range(10):
            result = visitor.call(like, [None, False], {"index": 1, "value": "forged " * 5000, "liked": True},
                                  session=uuid.uuid4().hex[:11])
            stats["calls"] += 1
            stats["refused"] += "Only an answer given" in json.dumps(result["data"])
        time.sleep(5)


def sample_rss(pid: int, until: float, peak: list) -> None:
    import psutil

    process = psutil.Process(pid)
    while time.time() < until:
        peak[0] = max(peak[0], process.memory_info().rss / 2**20)
        time.sleep(0.5)


def phase(url: str, config: dict, pid: int, args, seconds: float, attack: bool, files: dict) -> dict:
    until, peak = time.time() + seconds, [0.0]
    stats = {"ttft": [], "queue": [], "calls": 0, "errors": 0, "samples": []}
    hostile = {"calls": 0, "refused": 0}
    probe = Visitor(url, config, "10.0.0.1")
    listed = (probe.call(probe.fn("adapters"), [])["data"] or [[]])[0]
    adapter = listed[0] if listed else None  # Compare needs a finished run in the data dir (--home)
    threads = [threading.Thread(target=honest, args=(Visitor(url, config, f"10.20.0.{n + 1}"), until, adapter,
                                                      files["small"], stats)) for n in range(args.visitors)]
    if attack:
        kinds = {"memory": (hostile_memory, (url, config, until, files["bomb"], hostile)),
                 "queue": (hostile_queue, (url, config, until, hostile))}
        threads += [threading.Thread(target=kinds[k][0], args=kinds[k][1]) for k in args.attacks.split(",")]
    threads.append(threading.Thread(target=sample_rss, args=(pid, until + 30, peak)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ttft, queue = sorted(stats["ttft"]), sorted(stats["queue"])
    return {"peak_rss_mb": round(peak[0]), "ttft_p50_s": round(statistics.median(ttft), 2) if ttft else None,
            "ttft_p95_s": percentile(ttft, 0.95), "queue_wait_p50_s": percentile(queue, 0.5),
            "queue_wait_p95_s": percentile(queue, 0.95), "honest_calls": stats["calls"],
            "honest_errors": stats["errors"], "error_samples": stats["samples"], "adapter": adapter,
            **({"hostile_calls": hostile["calls"], "hostile_refused": hostile["refused"]} if attack else {})}


def percentile(values: list[float], share: float) -> float | None:
    """The `share` percentile of sorted `values`, rounded (None when there are none)."""
    return round(values[int(share * (len(values) - 1))], 2) if values else None


def launch(home: str | None, work: Path) -> tuple[subprocess.Popen, str, dict]:
    """app.py, public behind a stand-in proxy, on port 7990; returns (process, url, its /config)."""
    models = os.environ.get("FINETUNE_LAB_MODELS", str(Path.home() / ".finetune-lab" / "models"))
    env = {**os.environ, "FINETUNE_LAB_HOME": home or str(work / "home"), "FINETUNE_LAB_MODELS": models,
           "FINETUNE_LAB_PUBLIC": "1", "FINETUNE_LAB_ADMIN_KEY": ADMIN_KEY, "FINETUNE_LAB_BEHIND_PROXY": "1",
           "GRADIO_TEMP_DIR": str(work / "gradio")}
    log, url = open(work / "app.log", "w"), "http://127.0.0.1:7990/"
    server = subprocess.Popen([sys.executable, "app.py", "--port", "7990"], cwd=ROOT, env=env, stdout=log, stderr=log)
    for _ in range(240):
        try:
            return server, url, httpx.get(url + "config").json()
        except httpx.HTTPError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError(f"the app did not start in 120 s; see {log.name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visitors", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--baseline-seconds", type=float, default=60)
    parser.add_argument("--attacks", default="memory,queue", help="which hostile visitors: memory, queue")
    parser.add_argument("--home", help="a data dir with a finished run, for Compare (default: a new temporary one)")
    args = parser.parse_args()
    from bench.machine import describe

    work = Path(tempfile.mkdtemp(prefix="bench-public-"))
    files = {"small": work / "notes.txt", "bomb": work / "bomb.txt"}
    files["small"].write_text("".join(f"note {i} about {random.Random(i).choice(['cats', 'tea', 'rain', 'code'])}\n"
                                      for i in range(400)))
    files["bomb"].write_bytes(b"".join(b"doc %07d\n" % i for i in range(3_500_000)))
    server, url, config = launch(args.home, work)
    try:
        first = Visitor(url, config, "10.0.0.9")
        first.call(first.fn("chat"), ["Hi", *CHAT[1:]])  # the model loads (and converts, once) before timing
        baseline = phase(url, config, server.pid, args, args.baseline_seconds, False, files)
        attacked = phase(url, config, server.pid, args, args.seconds, True, files)
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    both = attacked["ttft_p95_s"] and baseline["ttft_p95_s"]  # a short run may finish no chat in a phase
    ratio = attacked["ttft_p95_s"] / baseline["ttft_p95_s"] if both else None
    print(json.dumps({"bench": "public", "visitors": args.visitors, "seconds": args.seconds,
                      "baseline_seconds": args.baseline_seconds, "with_attack": attacked, "baseline": baseline,
                      "p95_ttft_attack_over_baseline": round(ratio, 2) if ratio else None,
                      "machine": describe()}))


if __name__ == "__main__":
    main()
