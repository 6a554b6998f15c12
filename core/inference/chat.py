"""Stream chat replies from a base model, or from a base model and its tuned twin.

    python cli.py chat "What is the capital of France?"            # the CLI twin

Compare mode keeps ONE copy of the base weights: a LoRA adapter is attached with peft
(core.inference.adapters), and the base side runs inside `disable_adapter()`, so it is truly
the base model. A fully fine-tuned folder, or a QLoRA adapter on its 4-bit base
(core.inference.qlora), is loaded as a second model instead.
"""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Iterator

import torch

from core import threads
from core.inference import compiled_decode, step_loop
from core.inference.models import LoadedModel, ModelError
from core.inference.reply_text import TextStreamer
from core.inference.token_rules import ReplyRules, SampledRows, end_ids, model_top_k

QA_FORMAT = "question-answer"  # plain "Question: …\nAnswer:" text (core.data.formats.qa_prompt)


@dataclass
class GenerationSettings:
    """Sampling knobs for one reply; temperature 0 means greedy decoding."""

    system_prompt: str = ""
    temperature: float = 0.0
    top_p: float = 0.9
    max_new_tokens: int = 256
    repetition_penalty: float = 1.1
    max_input_tokens: int = 2048  # keeps CPU prefill time sane; the model allows more
    raw_text: bool = False  # continue the text as is, without the chat template
    min_new_tokens: int = 0  # benchmarks set it, so that every run generates the same count
    chat_template: str | None = None  # None: the model's own; else a Jinja text, or QA_FORMAT
    seed: int | None = None  # a sampled reply's random draws; None: the process's generator

    def sampling_seed(self) -> int | None:
        """The seed that decides this reply, if any: greedy replies draw nothing."""
        return self.seed if self.temperature > 0 else None


def checked_seed(seed) -> int | None:
    """A seed torch's generators take (a whole number that fits in 64 bits, signed), or None."""
    if seed is not None and (type(seed) is not int or not -2**63 <= seed < 2**63):
        raise ModelError("The seed must be a whole number that fits in 64 bits (signed).")
    return seed


@dataclass
class Reply:
    """The reply so far. `stats` and `notice` are filled in for the status line."""

    text: str = ""
    done: bool = False
    stats: str = ""
    notice: str = ""
    new_tokens: int = 0
    seconds: float = 0.0
    prompt_tokens: int = 0  # the prompt as the model read it (after any dropped turns)


def build_inputs(loaded: LoadedModel, messages: list[dict], settings: GenerationSettings):
    """Token ids for `messages` (the last one is the user's), dropping the oldest turns to fit.

    Returns (input_ids tensor of shape [1, n], notice); the notice says what was cut.
    """
    tokenizer = loaded.tokenizer
    if settings.max_new_tokens >= loaded.context_length:  # no room left for the prompt
        raise ModelError(f"max_new_tokens={settings.max_new_tokens} leaves no room for the message: this model reads "
                         f"{loaded.context_length} tokens in all, message and answer.")
    budget = min(settings.max_input_tokens, loaded.context_length - settings.max_new_tokens)
    system = [{"role": "system", "content": settings.system_prompt}] if settings.system_prompt else []
    turns, dropped = list(messages), 0
    while True:
        ids = _encode(tokenizer, system + turns, settings)
        if len(ids) <= budget or len(turns) == 1:
            break
        turns, dropped = turns[1:], dropped + 1
    notice = f"Dropped {dropped} oldest message(s) to fit {budget} tokens. " if dropped else ""
    if len(ids) > budget:
        ids = ids[-budget:]  # a single over-long message: keep its end, where the question is
        notice += f"Your message was cut to its last {budget} tokens."
    return torch.tensor([ids], device=loaded.model.device), notice.strip()


def _encode(tokenizer, messages: list[dict], settings: GenerationSettings) -> list[int]:
    template = tokenizer.chat_template if settings.chat_template is None else settings.chat_template
    if settings.raw_text or not template:
        return tokenizer(plain_prompt(messages))["input_ids"]
    if template == QA_FORMAT:
        from core.data.formats import qa_prompt

        return tokenizer(qa_prompt(messages))["input_ids"]
    text = tokenizer.apply_chat_template(messages, chat_template=template, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def plain_prompt(messages: list[dict]) -> str:
    """The text a model without a chat template gets: a pretrained-only model simply continues
    it, so the turns are joined by blank lines and system prompts are left out."""
    return "\n\n".join(m["content"] for m in messages if m["role"] != "system")


class _StopOnEvent:
    """A stopping criterion that ends generation when the caller goes away (Stop button)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return self.event.is_set()


def stream_reply(loaded: LoadedModel, messages: list[dict], settings: GenerationSettings,
                 adapter_name: str | None = None, beside_decode_thread: bool = False) -> Iterator[Reply]:
    """Yield the growing reply. With a peft model, `adapter_name=None` runs the pure base.

    Generation runs on core.threads' decode thread, or, with `beside_decode_thread`, in a
    thread of its own that can run next to it (the second model of a side-by-side Compare)."""
    check_messages(messages)
    input_ids, notice = build_inputs(loaded, messages, settings)
    streamer = TextStreamer(loaded.tokenizer)
    stop = threading.Event()
    kwargs = generate_kwargs(loaded, input_ids, settings, streamer, stop)
    route = compiled_decode.choose(loaded, 1, input_ids.shape[1] + int(settings.max_new_tokens), [adapter_name])
    kwargs.update(route.options)
    context = route.context if route.model is not None else base_only(loaded, adapter_name)
    if adapter_name is not None:
        # The mixed-adapter arithmetic of a Compare batch (core.inference.compare): the same path rounds
        # the same way, so a solo reply and its Compare pane agree token for token.
        context = adapter_context(loaded, [adapter_name], kwargs)
    start = time.perf_counter()
    done, result = launch_generate(loaded, kwargs, streamer, context, beside_decode_thread, route.model)
    reply = Reply(notice=notice, prompt_tokens=input_ids.shape[1])
    try:
        for reply.text, reply.new_tokens in streamer:
            yield reply
    finally:
        stop.set()  # also reached when the consumer is closed (Stop, disconnect)
    done()
    if "error" in result:
        raise ModelError(f"Generation failed: {result['error']}")
    reply.seconds, reply.text = time.perf_counter() - start, streamer.finish()
    reply.new_tokens = int(result["ids"].shape[1] - input_ids.shape[1])
    reply.stats = f"{reply.new_tokens} tokens, {reply.new_tokens / reply.seconds:.1f} tok/s" + (f", {route.words}" if route.words else "")
    reply.done = True
    yield reply


def launch_generate(loaded: LoadedModel, kwargs: dict, streamer, context=None, beside_decode_thread=False, model=None):
    """Start `loaded.model.generate(**kwargs)` (or, on `model`, a compiled step's view, core.inference.step_loop's) on
    core.threads' decode thread (or, with `beside_decode_thread`, in a thread of its own); return
    (wait, result). `result` gets "ids", or "error" together with the streamer's end, so its
    consumer never waits forever."""
    wanted, result = torch.get_num_threads(), {}  # the thread count core.threads set for this request

    def run():
        try:
            threads.apply(wanted)
            with loaded.lock, context or contextlib.nullcontext(), torch.inference_mode():
                result["ids"] = loaded.model.generate(**kwargs) if model is None else step_loop.generate(model, kwargs)
        except Exception as exc:  # surfaced by the caller, never lost in the thread
            result["error"] = exc
            streamer.end()

    if not beside_decode_thread:
        return threads.decode_thread().submit(run).result, result
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    return worker.join, result


def generate_kwargs(loaded: LoadedModel, input_ids, settings: GenerationSettings, streamer, stop,
                    seeds: list | None = None) -> dict:
    """`generate`'s arguments for a reply (a batch's rows: `input_ids`' rows), each sampled row
    drawing from a generator seeded with seeds[i] (default: every row the settings' seed)."""
    from transformers import LogitsProcessorList, StoppingCriteriaList

    # The same rules as transformers' own processors, in place (core.inference.token_rules);
    # repetition_penalty 1.0: not the model's own penalty too.
    rules = ReplyRules(settings.repetition_penalty, end_ids(loaded.model), settings.min_new_tokens or 0, input_ids.shape[1])
    processors = [rules] if rules.active() else []
    if settings.temperature > 0:  # each row drawn by SampledRows: generate's greedy pick takes its token
        seeds = seeds or [settings.sampling_seed()] * input_ids.shape[0]
        processors = [SampledRows(rules, settings.temperature, settings.top_p, model_top_k(loaded.model), seeds)]
    return dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer,
                max_new_tokens=int(settings.max_new_tokens), pad_token_id=loaded.tokenizer.pad_token_id,
                stopping_criteria=StoppingCriteriaList([_StopOnEvent(stop)]), logits_processor=LogitsProcessorList(processors),
                do_sample=False, top_p=None, top_k=None, repetition_penalty=1.0, min_new_tokens=None)


def check_messages(messages: list[dict]) -> None:
    if not messages or messages[-1].get("role") != "user":
        raise ModelError("Nothing to answer: the last message must be the user's.")
    if not str(messages[-1].get("content", "")).strip():
        raise ModelError("Empty message: type something first.")


def adapter_context(loaded: LoadedModel, adapter_names: list[str], kwargs: dict):
    """The context that applies adapter_names[i] to batch row i during `generate`: the lean
    rows path of core.inference.lora_rows, else peft's own `adapter_names` argument (added to kwargs).
    A batch of base rows only runs the pure base."""
    from core.inference.fast_decode import BASE
    from core.inference.lora_rows import adapter_rows

    if set(adapter_names) <= {BASE}:
        return base_only(loaded, None)

    context = adapter_rows(loaded.model, adapter_names)
    if context is None:
        kwargs["adapter_names"] = adapter_names
        return contextlib.nullcontext()
    return context


def base_only(loaded: LoadedModel, adapter_name: str | None):
    """With no adapter named, the context in which a peft model is the pure base model."""
    if adapter_name is None and hasattr(loaded.model, "disable_adapter"):
        # Once peft has injected LoRA layers, the base is only reachable through this.
        return loaded.model.disable_adapter()
    return contextlib.nullcontext()
