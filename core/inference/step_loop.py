"""Replies on a compiled decode step, in a loop of our own around it.

    used by core.inference.chat.launch_generate for replies on a ready compiled step
    (core.inference.compiled_decode); tests/test_step_loop.py holds it to `generate`'s tokens

Around a compiled step of 7.4 ms (SmolLM2, the 2-core EPYC), `generate` spent 0.85 ms a token:
each step it builds the step's inputs again (a 4-D mask over the cache's 512 slots, the position
ids, the 2-D mask grown by one), runs its stopping criteria and grows its copies. Here `generate`
itself reads the prompt and picks the first token (`max_new_tokens=1`, on a StaticCache handed
to it), its `prepare_inputs_for_generation` makes the first step's inputs, and each later step
only changes them in place: the new token, each row's position plus one, one more slot of the
mask. The scores, their rules (core.inference.token_rules), the padding of rows that have ended
and the end itself are `generate`'s, so each token is the one `generate` picks on the same step.
`generate` runs greedy for every reply: a sampled one's draws are a processor's
(core.inference.token_rules.SampledRows), which runs here too.
"""
from __future__ import annotations

import torch

from core.inference.token_rules import end_ids


def generate(model, kwargs: dict) -> torch.LongTensor:
    """What `model.generate(**kwargs)` returns, for a compiled step's view (kwargs with
    compiled_decode.generate_options), greedy: a sampled reply's draws are a processor's
    (core.inference.token_rules.SampledRows)."""
    from transformers import StaticCache

    streamer, budget = kwargs["streamer"], int(kwargs["max_new_tokens"])
    cache = StaticCache(config=model.config.get_text_config(decoder=True), max_cache_len=kwargs["max_cache_len"])
    prompt_pass = {k: v for k, v in kwargs.items() if k not in ("cache_implementation", "max_cache_len", "streamer")}
    ids = model.generate(**{**prompt_pass, "max_new_tokens": 1}, cache=cache, streamer=_StaysOpen(streamer))
    ends = torch.tensor(sorted(end_ids(model)), dtype=ids.dtype, device=ids.device)
    pad = kwargs.get("pad_token_id")
    if pad is None:  # generate pads with the first end id; with none, no row ends before the others
        pad = int(ends[0]) if len(ends) else 0
    rules, stopping = kwargs.get("logits_processor") or [], kwargs.get("stopping_criteria") or []
    unfinished = ~torch.isin(ids[:, -1], ends)
    # A Stop seen now ends the reply at its first token, as generate's check of that token does
    # for a Stop made during the prompt's pass (one made while the token streamed would, in
    # generate, end the reply a token later: the two cannot be told apart here).
    if budget > 1 and unfinished.any() and not _stopped(stopping, ids):
        ids = _decode(model, kwargs, cache, ids, budget - 1, rules, stopping, ends, pad, unfinished, streamer)
    streamer.end()
    return ids


def _decode(model, kwargs, cache, ids, budget, rules, stopping, ends, pad, unfinished, streamer) -> torch.LongTensor:
    """Up to `budget` more tokens after `ids` (the prompt and the first token, whose keys and
    values fill `cache`), one compiled step each, until every row has ended or a criterion stops it."""
    step = model.prepare_inputs_for_generation(ids, next_sequence_length=1, cache=cache, use_cache=True,
                                               logits_to_keep=1, **_masks(kwargs["attention_mask"], ids))
    call, mask = model.get_compiled_call(kwargs["compile_config"]), step["attention_mask"]
    for _ in range(budget):
        outputs = call(**step, return_dict=True)
        scores = outputs.logits[:, -1].to(copy=True, dtype=torch.float32)
        for rule in rules:
            scores = rule(ids, scores)
        token = torch.where(unfinished, scores.argmax(-1), pad)  # an ended row only takes padding, as in generate
        ids = torch.cat([ids, token[:, None]], dim=-1)
        unfinished &= ~torch.isin(token, ends)
        stop = _stopped(stopping, ids)  # before the token is streamed, as generate checks
        streamer.put(token)
        if stop or not unfinished.any():
            break
        step["input_ids"], step["position_ids"] = token[:, None], step["position_ids"] + 1
        mask[..., ids.shape[1] - 1] = True  # the new token's slot: every row attends to it
    return ids


def _masks(attention_mask: torch.Tensor, ids: torch.Tensor) -> dict:
    """The 2-D mask and position ids `generate` holds after the prompt and one token: the mask
    left out where it is all ones (`generate` drops it), positions counted over the mask."""
    grown = torch.cat([attention_mask, attention_mask.new_ones((ids.shape[0], 1))], dim=-1)
    positions = (grown.long().cumsum(-1) - 1).masked_fill(grown == 0, 0)
    return {"attention_mask": None if bool((attention_mask == 1).all()) else grown, "position_ids": positions}


def _stopped(stopping, ids: torch.Tensor) -> bool:
    """Whether a caller's stopping criterion (chat's Stop: a plain bool) ends every row now."""
    for criterion in stopping:
        done = criterion(ids, None)
        if done is True or (torch.is_tensor(done) and bool(done.all())):
            return True
    return False


class _StaysOpen:
    """A streamer that passes tokens on but not the end: the prompt's pass is not the reply's end."""

    def __init__(self, streamer):
        self.streamer = streamer

    def put(self, value) -> None:
        self.streamer.put(value)

    def end(self) -> None:
        pass
