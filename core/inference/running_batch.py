"""A batch that takes new rows while it decodes (continuous batching), for chat on a CPU.

    batch = RunningBatch(loaded, settings)
    row = batch.admit(owner, messages, BASE, settings)   # its prompt pass; the row's first token
    while not row.reply.done: batch.step()                # one token for every row; keep() drops rows

core.inference.batching drives it: a visitor who asks while others' answers run joins them at
the next token, instead of waiting for the whole batch to end. Each row's prompt is read alone
(no padding), then its keys and values join the batch's cache, left-padded to the longest row.
A decoding step runs every row in one pass over the weights; in attention, each row reads its
own keys only (core.inference.decode_attention.rows_starting_at), and it samples from its own
ids (its repetition penalty counts its prompt and answer, as `generate` does for a solo reply)
and, when its request names a seed, from its own generator, whoever else is in the batch.
So every row's greedy tokens are its solo reply's, whenever it joined (tests/test_batching.py).

It needs the packed decode attention and a plain growing cache (no sliding window): `joins`
says whether a model has both; elsewhere batching runs whole batches through `generate`.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from core import threads
from core.inference.chat import GenerationSettings, Reply, base_only, build_inputs
from core.inference.compare import add_token, in_format
from core.inference.decode_attention import OWN_KERNEL_ATTENTION, PACKED_ATTENTION, rows_starting_at
from core.inference.fast_decode import BASE
from core.inference.lora_rows import installed, rows_forwards
from core.inference.models import LoadedModel
from core.inference.reply_text import ReplyText
from core.inference.token_rules import ReplyRules, drawn, end_ids, model_top_k


@dataclass(eq=False)
class LiveRow:
    """One answer in the batch: its ids so far (prompt, then answer) and its reply."""

    owner: object  # whoever asked (core.inference.batching's request)
    adapter: str
    ids: list[int]
    budget: int  # its max_new_tokens
    reply: Reply
    answer: ReplyText  # its tokens and their text
    generator: torch.Generator | None = None  # its seeded draws (None: the process's generator)
    started: float = field(default_factory=time.perf_counter)


def joins(loaded: LoadedModel) -> bool:
    """Whether `loaded`'s chat can take rows into a running batch (else whole batches only)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=loaded.model.config)
    return (loaded.model.config._attn_implementation in (PACKED_ATTENTION, OWN_KERNEL_ATTENTION) and loaded.compiled is None
            and all(type(layer) is DynamicLayer for layer in cache.layers))


class RunningBatch:
    """The rows decoding together on one model, their cache, and the settings they share."""

    def __init__(self, loaded: LoadedModel, settings: GenerationSettings):
        self.loaded, self.settings = loaded, settings
        self.rows: list[LiveRow] = []
        self.cache = None  # a DynamicCache once a row is in; slot t of row b holds its token t - starts[b]
        self.ends, self.top_k = end_ids(loaded.model), model_top_k(loaded.model)
        self._forwards: dict = {}  # the adapters' row forwards, by what they were prepared for

    def admit(self, owner, messages: list[dict], adapter: str, own: GenerationSettings,
              template: str | None = None) -> LiveRow:
        """Read the row's prompt alone and add it to the batch with its first token."""
        ids, notice = build_inputs(self.loaded, messages, in_format(own, template))
        row = LiveRow(owner, adapter, ids[0].tolist(), int(own.max_new_tokens),
                      Reply(notice=notice, prompt_tokens=ids.shape[1]),
                      ReplyText(self.loaded.tokenizer), _generator(own.sampling_seed()))
        logits, cache = _on_decode_thread(self._prompt_pass, ids, adapter)
        self._add_token(row, self._choose(row, logits))
        self._merge(row, cache)
        return row

    def step(self) -> None:
        """One token for every row in the batch (an ended row's is ignored until keep() drops it)."""
        tokens = torch.tensor([[row.ids[-1]] for row in self.rows])  # each row's newest token
        positions = torch.tensor([[len(row.ids) - 1] for row in self.rows])
        width = self.cache.get_seq_length()
        starts = [width - (len(row.ids) - 1) for row in self.rows]
        logits = _on_decode_thread(self._decode_pass, tokens, positions, starts)
        for i, row in enumerate(self.rows):
            self._add_token(row, self._choose(row, logits[i:i + 1]))

    def keep(self, kept: list[LiveRow]) -> None:
        """Go on with `kept` rows only (in their order), dropping the others' cache."""
        if len(kept) == len(self.rows):
            return
        index = torch.tensor([self.rows.index(row) for row in kept], dtype=torch.long)
        self.rows = kept
        if not kept:
            self.cache = None
            return
        trim = self.cache.get_seq_length() - max(len(row.ids) - 1 for row in kept)  # slots no row reads
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[index, :, trim:], layer.values[index, :, trim:]

    def _prompt_pass(self, ids: torch.Tensor, adapter: str):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.loaded.model.config)
        with self.loaded.lock, self._adapters([adapter]) as extra, torch.inference_mode():
            out = self.loaded.model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1, **extra)
        return out.logits[:, -1].float(), cache

    def _decode_pass(self, tokens, positions, starts) -> torch.Tensor:
        with (self.loaded.lock, self._adapters([row.adapter for row in self.rows]) as extra,
              rows_starting_at(starts), torch.inference_mode()):
            out = self.loaded.model(input_ids=tokens, position_ids=positions, cache=self.cache,
                                    use_cache=True, **extra)
        return out.logits[:, -1].float()

    @contextmanager
    def _adapters(self, names: list[str]):
        """The context that runs names[i] on row i; it yields the forward's extra arguments."""
        if set(names) <= {BASE}:
            with base_only(self.loaded, None):
                yield {}
            return
        key = (tuple(names), id(self.loaded.model), len(self.loaded.adapters))
        if key not in self._forwards:
            if len(self._forwards) > 8:
                self._forwards.clear()
            self._forwards[key] = rows_forwards(self.loaded.model, names)
        prepared = self._forwards[key]
        if prepared is None:  # not plain LoRA: peft's own per-row argument
            yield {"adapter_names": names}
            return
        with installed(prepared):
            yield {}

    @torch.inference_mode()  # the rules change the pass's logits in place, and those are inference tensors
    def _choose(self, row: LiveRow, logits: torch.Tensor) -> int:
        """The row's next token from its logits, processed as `generate` processes a solo reply's."""
        settings, ids = self.settings, torch.tensor([row.ids])
        rules = ReplyRules(settings.repetition_penalty, self.ends, settings.min_new_tokens, len(row.ids) - len(row.answer.tokens))
        if settings.temperature <= 0:
            return int(rules(ids, logits).argmax(-1))
        return int(drawn(ids, logits, rules, settings.temperature, settings.top_p, self.top_k, [row.generator])[0])

    def _add_token(self, row: LiveRow, token: int) -> None:
        row.ids.append(token)
        add_token(row.reply, row.answer, token, token in self.ends, row.started, row.budget)

    def _merge(self, row: LiveRow, cache) -> None:
        """Add the row's prompt cache to the batch's, left-padding whichever is shorter."""
        if self.cache is None:
            self.cache, self.rows = cache, [row]
            return
        width = max(self.cache.get_seq_length(), cache.get_seq_length())
        for mine, new in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([_left_padded(mine.keys, width), _left_padded(new.keys, width)])
            mine.values = torch.cat([_left_padded(mine.values, width), _left_padded(new.values, width)])
        self.rows.append(row)


def _generator(seed: int | None) -> torch.Generator | None:
    return None if seed is None else torch.Generator().manual_seed(seed)


def _left_padded(states: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - states.shape[2]
    return states if not missing else torch.cat([states.new_zeros(*states.shape[:2], missing, states.shape[3]),
                                                 states], 2)


def _on_decode_thread(work, *args):
    """Run a pass on core.threads' decode thread, where chat's one OpenMP team lives."""
    return threads.decode_thread().submit(work, *args).result()
