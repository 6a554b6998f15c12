"""A reply's rules on its next token's scores: the repetition penalty and a least answer length.

    used by core.inference.chat (greedy replies, as `generate`'s `logits_processor`) and
    core.inference.running_batch (every row, before its sampling warpers); tests/test_token_rules.py

`ReplyRules` is a transformers LogitsProcessor that computes what transformers' own
`RepetitionPenaltyLogitsProcessor` and `MinNewTokensLengthLogitsProcessor` compute, in place on
the scores `generate` has just copied out of the logits, so the next token is the same. Theirs
copy the whole vocabulary's scores each step: the penalty pads them and scatters into new
tensors; the least length builds a vocabulary-long mask, and `generate` then adds
`MinLengthLogitsProcessor`, which builds it again. With SmolLM2's 49,152 tokens that was 0.6 ms
of a single pane's compiled step and 1.1 ms of Compare's (6.7 and 9.1 ms a step in all).

Through `generate`, greedy replies only: with sampling, `generate` applies its warpers
(temperature, top-k, top-p) before any processor passed in, and the penalty must come first;
there it keeps its own. The running batch applies its warpers itself, after these rules.
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


def end_ids(model) -> set[int]:
    """The model's end-of-sequence ids, as `generate` reads them from its generation config."""
    ends = model.generation_config.eos_token_id
    ends = ends if isinstance(ends, list) else [ends]
    return {end for end in ends if end is not None}
