"""Topics benchmark: the embedding cache against a fresh embedding, a fast topic refit, and
naming the topics with the chat model.

    .venv/bin/python bench/bench_topics.py [--repeats 5]

On the 4,080 Guardian headlines with the packaged MiniLM:
(a) a fresh embedding of the whole corpus (the caches emptied first) against a cache hit, the
    same call the Embeddings tab makes, in one run: the ratio is the cache's speed-up. The hit
    is read from the .npy file (as in a fresh process); `memory_hit_s` is the in-memory hit of
    the next click in the same process;
(b) a refit of the fast topic model (PCA + KMeans on the cached embeddings, BERTopic's own
    c-TF-IDF and representation), as when the user moves the topic-count slider.
(c) naming 15 topics with the packaged SmolLM2 (`label_topics`: every topic's question in one
    batched greedy generate) against the plain way, one `stream_reply` per topic with the same
    questions and settings, interleaved; `naming_speedup` is their ratio.
Required: the cache hit is >= 50x faster, and the refit takes <= 5 s. The data dir is a
temporary folder, removed afterwards. The last line printed is a JSON object with the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def timed(call) -> tuple[float, object]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as home:
        os.environ["FINETUNE_LAB_HOME"] = home
        from core import threads
        from core.explore.corpora import load_corpus
        from core.explore.embeddings import RECENT, embed, load_embedder
        from core.explore.topics import fit_topics

        threads.apply(threads.for_chat(job_running=False))
        texts = load_corpus("guardian-headlines").texts
        load_embedder()  # loading the model is not what the cache saves
        fresh, hits, memory_hits = [], [], []
        for _ in range(max(1, args.repeats // 2)):
            shutil.rmtree(Path(home) / "embeddings", ignore_errors=True)
            RECENT.clear()
            seconds, vectors = timed(lambda: embed(texts))
            fresh.append(seconds)
            for _ in range(args.repeats):
                memory_hits.append(timed(lambda: embed(texts))[0])
                RECENT.clear()  # as in a fresh process: the .npy file answers
                hits.append(timed(lambda: embed(texts))[0])
        fit_topics(texts, vectors, "fast", 20)  # first fit: imports and numba warm-up
        refits = [timed(lambda n=n: fit_topics(texts, vectors, "fast", n))[0] for n in range(15, 15 + args.repeats)]
        fifteen = fit_topics(texts, vectors, "fast", 15)
        batched, one_at_a_time = naming_seconds(fifteen, max(2, args.repeats // 2))
    figures = {"documents": len(texts), "fresh_embed_s": round(statistics.median(fresh), 2),
               "cache_hit_s": round(statistics.median(hits), 4),
               "memory_hit_s": round(statistics.median(memory_hits), 4),
               "cache_speedup": round(statistics.median(fresh) / statistics.median(hits), 1),
               "refit_s": round(statistics.median(refits), 2), "naming_15_topics_s": round(statistics.median(batched), 2),
               "naming_one_at_a_time_s": round(statistics.median(one_at_a_time), 2),
               "naming_speedup": round(statistics.median(one_at_a_time) / statistics.median(batched), 2),
               "threads": threads.for_chat(False)}
    print(f"{len(texts)} headlines: fresh embedding {figures['fresh_embed_s']} s, cache hit "
          f"{figures['cache_hit_s'] * 1000:.1f} ms ({figures['cache_speedup']}x; required >= 50x); "
          f"fast refit {figures['refit_s']} s (required <= 5 s); naming 15 topics {figures['naming_15_topics_s']} s, "
          f"one at a time {figures['naming_one_at_a_time_s']} s; medians")
    print(json.dumps(figures))
    return figures


def naming_seconds(result, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds to name every topic of `result`: batched (`label_topics`), and one reply per topic."""
    from core.explore.topics import label_topics, naming_question, naming_settings
    from core.inference.chat import stream_reply
    from core.inference.models import load_model

    loaded = load_model("smollm2-135m-instruct")
    topics = [t for t in sorted(result.model.get_topics()) if t != -1]

    def one_at_a_time():
        for topic in topics:
            list(stream_reply(loaded, [{"role": "user", "content": naming_question(result, topic)}], naming_settings()))

    label_topics(result, max_topics=2)  # warm-up: the first generate's own costs
    batched, single = [], []
    for _ in range(repeats):
        batched.append(timed(lambda: label_topics(result))[0])
        single.append(timed(one_at_a_time)[0])
    return batched, single


if __name__ == "__main__":
    main()
