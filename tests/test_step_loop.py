"""core.inference.step_loop against `generate` on the same compiled step (a tiny random Llama,
float weights, a step for two rows, as Compare's): the same ids, the same streamed tokens and
every step's scores to the bit, with a repetition penalty and a least length, for rows of
different lengths (left padding) where one ends early, a Stop mid-reply and one made before
the reply began. One row, on the real packaged model: tests/test_compiled_decode.py.

    .venv/bin/python -m pytest tests/test_step_loop.py
"""
from __future__ import annotations

import threading

import pytest
import torch

from core.inference import compiled_decode, compiled_store, compiled_views, step_loop
from core.inference.chat import GenerationSettings, generate_kwargs
from core.inference.compare import _RowStreamer, left_padded
from core.inference.models import LoadedModel


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, tmp_path_factory):
    """(the tiny model loaded, a view of it with its compiled step for two rows)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = LoadedModel("tiny", str(tiny_model_dir), AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(),
                         AutoTokenizer.from_pretrained(tiny_model_dir), 0.0)
    step = compiled_decode.CompiledStep(model=compiled_views.base_view(loaded.model), rows=2)
    kwargs = compiled_decode._step_kwargs(step, loaded.tokenizer)
    path = tmp_path_factory.mktemp("steps") / "step.bin"
    compiled_decode._use_for_generate(step.model, compiled_store.compile_and_keep(step.model, kwargs, path))
    return loaded, step.model


class StopAfter(_RowStreamer):
    """Collects each step's tokens; sets `stop` once `count` tokens have come."""

    def __init__(self, stop: threading.Event, count: int):
        super().__init__()
        self.stop, self.count, self.tokens = stop, count, []
        if count <= 0:  # Stop pressed before the reply began
            stop.set()

    def put(self, value):
        super().put(value)
        if not self.steps.empty():
            self.tokens.append(self.steps.get())
            if len(self.tokens) >= self.count:
                self.stop.set()


class Scores:
    """A last logits processor that keeps every step's scores as the token is picked from them."""

    def __init__(self):
        self.seen = []

    def __call__(self, input_ids, scores):
        self.seen.append(scores.clone())
        return scores


def both_ways(loaded, view, prompts, settings: GenerationSettings, stop_after: int = 10**6):
    """{way: (ids, streamed tokens, whether the streamer was ended)} for `generate` and the loop,
    after checking that each step's scores were the same to the bit."""
    rows = [loaded.tokenizer(p, return_tensors="pt")["input_ids"] for p in prompts]
    ids, mask = left_padded(loaded, rows)
    out, scores = {}, {}
    for way in ("generate", "loop"):
        stop, scores[way] = threading.Event(), Scores()
        streamer = StopAfter(stop, stop_after)
        kwargs = {**generate_kwargs(loaded, ids, settings, streamer, stop), "attention_mask": mask,
                  **compiled_decode.generate_options("cpu")}
        kwargs["logits_processor"].append(scores[way])
        with torch.inference_mode():
            got = view.generate(**kwargs) if way == "generate" else step_loop.generate(view, kwargs)
        out[way] = (got.tolist(), streamer.tokens, streamer.steps.get_nowait() is None)
    pairs = list(zip(scores["generate"].seen, scores["loop"].seen))
    assert len(scores["loop"].seen) == len(scores["generate"].seen) and all(torch.equal(a, b) for a, b in pairs)
    return out


def test_the_loop_decodes_generates_tokens(tiny):
    loaded, view = tiny
    prompts = ["The capital of France is", "The capital of Spain is"]  # 5 ids each
    for settings in (GenerationSettings(max_new_tokens=12, repetition_penalty=1.3),
                     GenerationSettings(max_new_tokens=5, repetition_penalty=1.0, min_new_tokens=5)):
        out = both_ways(loaded, view, prompts, settings)
        assert out["loop"] == out["generate"] and out["loop"][2], out
        assert [len(row) for row in out["loop"][0]] == [5 + settings.max_new_tokens] * 2


def test_two_rows_of_different_lengths_where_one_ends_early(tiny):
    """Row 0 ends when it picks the token made its end of sequence here: from then on it takes
    padding, in both ways, while row 1 goes on; then a Stop during the 4th token ends both, and
    one made before the reply began ends it at its first token."""
    loaded, view = tiny
    prompts, settings = ["Hello there, how are you today?", "Hi"], GenerationSettings(max_new_tokens=10)
    free = both_ways(loaded, view, prompts, settings)
    assert free["loop"] == free["generate"], free
    config, before = loaded.model.generation_config, loaded.model.generation_config.eos_token_id
    config.eos_token_id = free["loop"][1][3][0]  # row 0's fourth token
    try:
        ended = both_ways(loaded, view, prompts, settings)
        stopped = both_ways(loaded, view, prompts, settings, stop_after=4)
        at_once = both_ways(loaded, view, prompts, settings, stop_after=0)
    finally:
        config.eos_token_id = before
    assert ended["loop"] == ended["generate"] and stopped["loop"] == stopped["generate"], (ended, stopped)
    pad = loaded.tokenizer.pad_token_id
    if free["loop"][1][3][1] != config.eos_token_id:  # row 1 did not end at the same token
        assert [step[0] for step in ended["loop"][1][4:]] == [pad] * 6
    # Stop set while the 4th token streams is seen with the 5th, which streams too (generate
    # checks its criteria before it streams a token), and the reply ends there
    assert len(stopped["loop"][1]) == 5 and stopped["loop"][2]
    assert at_once["loop"] == at_once["generate"] and len(at_once["loop"][1]) == 1  # the first token only
