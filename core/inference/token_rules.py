"""How a reply's next token is chosen: the repetition penalty, a least answer length, and each
row's random draws from its own generator.

    used by core.inference.chat (as `generate`'s `logits_processor`) and
    core.inference.running_batch (every row); tests/test_token_rules.py, tests/test_batching.py

`ReplyRules` is a transformers LogitsProcessor that computes what transformers' own
`RepetitionPenaltyLogitsProcessor` and `MinNewTokensLengthLogitsProcessor` compute, in place on
the scores `generate` has just copied out of the logits, so the next token is the same. Theirs
copy the whole vocabulary's scores each step: the penalty pads them and scatters into new
tensors; the least length builds a vocabulary-long mask, and `generate` then adds
`MinLengthLogitsProcessor`, which builds it again. With SmolLM2's 49,152 tokens that was 0.6 ms
of a single pane's compiled step and 1.1 ms of Compare's (6.7 and 9.1 ms a step in all).

`SampledRows` samples every row of a batch as `generate` samples a solo reply (the rules, then
temperature, the model's top-k and top-p), row i from its own generator when its request names a
seed: a seeded answer is the same whoever else's rows decode beside it, and the process's
generator is not touched. `generate` would draw every row from that one generator, so it runs
greedy, with this processor leaving each row's drawn token alone in the scores for its pick (and
core.inference.step_loop's loop around the compiled step, greedy only, serves sampled replies
too). The running batch draws with `drawn`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from transformers import LogitsProcessor

from core.errors import LabError


class ReplyRules(LogitsProcessor):
    """Penalize every token already in a row's ids (prompt and answer) by `penalty`, as
    transformers does (divide a positive score, multiply a negative one), and mask the end-of-
    sequence ids `ends` while the answer after `prompt_length` ids is shorter than `least`."""

    def __init__(self, penalty: float, ends, least: int = 0, prompt_length: int = 0):
        if penalty <= 0:
            raise LabError(f"Repetition penalty must be above 0, not {penalty}.")
        self.penalty, self.ends, self.least, self.prompt_length = penalty, sorted(ends), least, prompt_length

    def active(self) -> bool:
        """Whether the rules change any score at all."""
        return self.penalty != 1.0 or (bool(self.ends) and self.least > 0)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if self.penalty != 1.0:
            vocab = scores.shape[-1]
            ids = input_ids.clamp(max=vocab)
            # An id past the scores (an embedding larger than the head) lands in a column added
            # for it and dropped after, as transformers does.
            room = scores if int(ids.max()) < vocab else F.pad(scores, (0, 1))
            seen = room.gather(1, ids)
            room.scatter_(1, ids, torch.where(seen < 0, seen * self.penalty, seen / self.penalty))
            scores = room[..., :vocab]
        if self.ends and input_ids.shape[1] - self.prompt_length < self.least:
            scores[:, self.ends] = -math.inf
        return scores


class SampledRows(LogitsProcessor):
    """Each row's next token drawn (`drawn`), row i from a generator seeded with seeds[i] (None:
    the process's); the scores come back -inf but for that token, for a greedy pick. Call
    `generate` greedy, without its own penalty: the rules are applied here."""

    def __init__(self, rules: ReplyRules, temperature: float, top_p: float, top_k: int | None, seeds: list):
        self.rules, self.temperature, self.top_p, self.top_k, self.seeds = rules, temperature, top_p, top_k, seeds
        self.generators = None  # made on the scores' device at the first step

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if self.generators is None:
            self.generators = [None if seed is None else torch.Generator(scores.device).manual_seed(seed)
                               for seed in self.seeds]
        tokens = drawn(input_ids, scores, self.rules, self.temperature, self.top_p, self.top_k, self.generators)
        return torch.full_like(scores, -math.inf).scatter_(1, tokens[:, None], 0.0)


def drawn(input_ids: torch.LongTensor, scores: torch.Tensor, rules: ReplyRules, temperature: float, top_p: float,
          top_k: int | None, generators: list) -> torch.Tensor:
    """Each row's sampled next token, as `generate` samples (its warpers, in its order), row i
    drawn from generators[i] (None: the process's generator)."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    scores = TemperatureLogitsWarper(temperature)(input_ids, rules(input_ids, scores))
    if top_k:
        scores = TopKLogitsWarper(top_k)(input_ids, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(input_ids, scores)
    probs = torch.softmax(scores, -1)
    return torch.cat([torch.multinomial(probs[i:i + 1], 1, generator=generator)[0]
                      for i, generator in enumerate(generators)])


def model_top_k(model) -> int:
    """The top-k `generate` samples a model with: its generation config's, else transformers' default."""
    top_k = model.generation_config.top_k
    return type(model.generation_config)._get_default_generation_params()["top_k"] if top_k is None else top_k


def end_ids(model) -> set[int]:
    """The model's end-of-sequence ids, as `generate` reads them from its generation config."""
    ends = model.generation_config.eos_token_id
    ends = ends if isinstance(ends, list) else [ends]
    return {end for end in ends if end is not None}
