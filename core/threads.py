"""The one CPU thread policy: how chat and a training job share the cores.

    python -c "from core.threads import for_chat, for_job; print(for_chat(False), for_job())"

Measured on 2 cores: with a second busy process, 2-thread generation collapsed from 17 to
~1.5 tok/s, while 1 thread held ~12 tok/s. So a training job started from the app leaves one
core to chat (`for_job`), and chat drops to one thread while a job runs (`for_chat`). The job
launcher applies `for_job` to start and resume alike; the trainer reads it back (`for_training`).
$FINETUNE_LAB_THREADS sets chat's count when no job runs.

Which thread runs torch matters as much as how many. torch's OpenMP runtime (libgomp) gives
each thread that runs a parallel kernel a team of its own, and once the teams' threads outnumber
the cores it stops spinning between kernels and puts them to sleep, so each of a decode step's
~900 kernels pays a wake-up. Measured on 2 cores (int8 path, 32 tokens): 41.7 tok/s with one
team, 24.8 once a second long-lived thread had run one matmul. So chat generates on ONE
long-lived thread (`decode_thread`), and other torch work the app does from its many request
threads (loading a model, an adapter, embedding a corpus) runs in a short-lived thread of its
own (`in_own_thread`), whose team ends with it.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

from core.settings import settings


def cores() -> int:
    return os.cpu_count() or 1


def for_chat(job_running: bool) -> int:
    if job_running:
        return 1
    return settings().threads or cores()


def for_job() -> int:
    """Threads for a job the app launches: every core but one, which chat keeps."""
    return max(1, cores() - 1)


def job_env(threads: int) -> dict:
    """The environment that tells a job's process (and its BLAS) how many threads to use."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def for_training(requested: int = 0) -> int:
    """Inside the trainer: the config's `threads`, else what the launcher set, else the cores
    split among the DDP ranks."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    return max(1, requested or int(os.environ.get("OMP_NUM_THREADS", 0)) or cores() // world)


def apply(count: int) -> int:
    """Set torch's intra-op threads to `count` (only when it changes: the call is not free)."""
    import torch

    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


_DECODE = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")


def decode_thread() -> ThreadPoolExecutor:
    """The one long-lived thread that runs chat generation (see the module docstring)."""
    return _DECODE


def in_own_thread(work, *args, **kwargs):
    """Run `work(*args, **kwargs)` in a new thread and return its result (or raise its error)."""
    outcome = {}

    def run():
        try:
            outcome["value"] = work(*args, **kwargs)
        except BaseException as exc:  # re-raised in the caller's thread below
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
