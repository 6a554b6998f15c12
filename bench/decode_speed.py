"""Decode-speed figures for bench/bench_chat.py: each decode path's rate and its share of the
machine's bandwidth limit, greedy agreement of int8 with eager bf16, and Compare against a
single pane. Run through bench_chat.py; the functions take an already loaded model source.
"""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager

import torch

from core import threads

# Ten fixed prompts for the agreement check: facts, instructions, open-ended writing.
PROMPTS = [
    "What is the capital of France?", "Write a short paragraph about the history of Paris.",
    "Explain LoRA in one sentence.", "Give me three tips for sleeping better.",
    "What is photosynthesis?", "Translate 'good morning' into Spanish.",
    "Write a haiku about the sea.", "How do I boil an egg?",
    "What are the primary colors?", "Summarise the plot of Romeo and Juliet.",
]


def read_bandwidth_gbs(repeats: int = 5) -> float:
    """Median read bandwidth in GB/s: summing a 1 GB tensor reads each byte once."""
    data = torch.ones(256 * 1024 * 1024, dtype=torch.float32)
    data.sum()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        data.sum()
        times.append(time.perf_counter() - start)
    return data.nbytes / statistics.median(times) / 1e9


def bytes_per_token(model) -> int:
    """Bytes a decoding step reads: every weight once, except an input embedding that no output
    layer shares (only one row of it is read per token)."""
    tensors = {t.data_ptr(): t for t in [*model.parameters(), *model.buffers()]}
    total = sum(t.nbytes for t in tensors.values())
    embedding = model.get_input_embeddings().weight
    output = getattr(model.get_output_embeddings(), "weight", None)
    if output is None or output.data_ptr() != embedding.data_ptr():
        total -= embedding.nbytes
    return total


def load_path(source: str, path: str):
    """A LoadedModel for one decode path: 'eager-fp32', 'eager-bf16', 'int8' (bf16 activations)
    or 'int8-own' (our own kernels: core.inference.own_kernels, which must serve here)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.inference.decode_attention import use_packed_decode_attention
    from core.inference.fast_decode import quantize_linears
    from core.inference.models import LoadedModel

    dtype = torch.float32 if path == "eager-fp32" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype).eval()
    if path == "int8":
        quantize_linears(model)
    if path == "int8-own":
        from core.inference import own_kernels

        assert not own_kernels.unavailable(), own_kernels.unavailable()
        quantize_linears(model, own_kernels.rows_times_int8, own_kernels.pack)
    use_packed_decode_attention(model, own_kernel=path == "int8-own")  # as core.inference.models loads on a CPU
    tokenizer = AutoTokenizer.from_pretrained(source)
    return LoadedModel(path, source, model, tokenizer, 0.0, decode="int8" if path.startswith("int8") else "eager")


def decode_rates(paths: dict, tokens: int, repeats: int) -> dict:
    """Median tokens/s of the app's streaming path for each loaded path, `tokens` new tokens per
    reply. The paths take turns within each repeat, so the host's noise hits them alike."""
    from core.inference.chat import GenerationSettings, stream_reply

    settings = GenerationSettings(max_new_tokens=tokens, min_new_tokens=tokens)
    messages = [{"role": "user", "content": PROMPTS[1]}]
    rates = {name: [] for name in paths}
    for loaded in paths.values():
        list(stream_reply(loaded, messages, settings))  # warm-up
    for _ in range(repeats):
        for name, loaded in paths.items():
            *_, reply = stream_reply(loaded, messages, settings)
            rates[name].append(reply.new_tokens / reply.seconds)
    return {name: statistics.median(values) for name, values in rates.items()}


def greedy_generate(loaded, prompt: str, tokens: int, rows: int = 1, **options) -> torch.Tensor:
    """`rows` copies of the prompt's greedy continuation (`tokens` new tokens), on the thread
    where the app generates; `options` go to `generate` (the compiled step's, say)."""
    from core.inference.chat import GenerationSettings, build_inputs

    settings = GenerationSettings(max_new_tokens=tokens, min_new_tokens=tokens)
    ids, _ = build_inputs(loaded, [{"role": "user", "content": prompt}], settings)
    ids = ids.repeat(rows, 1)

    def generate():
        with torch.inference_mode():
            return loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                         max_new_tokens=tokens, min_new_tokens=tokens,
                                         repetition_penalty=settings.repetition_penalty,
                                         pad_token_id=loaded.tokenizer.pad_token_id, **options)

    return threads.decode_thread().submit(generate).result()[:, ids.shape[1]:]


def greedy_tokens(loaded, prompt: str, tokens: int, **options) -> list[int]:
    return greedy_generate(loaded, prompt, tokens, **options)[0].tolist()


def two_rows_over_one(loaded, tokens: int, repeats: int) -> float:
    """Median time of a batch of two base rows over one row: what Compare's second row costs the
    kernels before any adapter work, so the floor under `compare_over_single`."""
    prompt, times = PROMPTS[1], {1: [], 2: []}
    greedy_generate(loaded, prompt, tokens, 2)  # warm-up
    for _ in range(repeats):
        for rows in times:  # interleaved, so the host's noise hits both alike
            start = time.perf_counter()
            greedy_generate(loaded, prompt, tokens, rows)
            times[rows].append(time.perf_counter() - start)
    return statistics.median(times[2]) / statistics.median(times[1])


def agreement(reference, candidate, tokens: int = 32, candidate_options: dict | None = None) -> dict:
    """On the ten prompts: how many keep the reference's first `tokens` greedy tokens, and the
    mean length of the common prefix. `candidate_options` go to the candidate's `generate`."""
    want = [greedy_tokens(reference, prompt, tokens) for prompt in PROMPTS]
    return agreement_with(want, [greedy_tokens(candidate, prompt, tokens, **(candidate_options or {}))
                                 for prompt in PROMPTS])


def agreement_with(want: list[list[int]], got: list[list[int]]) -> dict:
    """`agreement`'s figures for greedy token lists already generated, prompt by prompt."""
    tokens = len(want[0])
    prefixes = [next((i for i, (a, b) in enumerate(zip(w, g)) if a != b), tokens) for w, g in zip(want, got)]
    return {"prompts_identical": sum(p == tokens for p in prefixes), "prompts": len(prefixes),
            "mean_common_prefix": statistics.mean(prefixes)}


@contextmanager
def on_kernels(model, own: bool):
    """A context in which `model`'s int8 products and decoding attention run on our own kernels
    (core.inference.own_kernels) or on torch's, so one loaded model serves both in one run. Each
    layer's weight is laid out for its kernel meanwhile (packed for ours, rows for torch's)."""
    from core import threads
    from core.inference import fast_decode, own_kernels
    from core.inference.decode_attention import use_packed_decode_attention

    layers = [m for m in model.modules() if isinstance(m, fast_decode.Int8Linear)]
    kept = [(layer.rows_product, layer.qweight, layer.pack, layer.appended) for layer in layers], own_kernels.serves(model)
    moved = [layer for layer in layers if (layer.rows_product is own_kernels.rows_times_int8) != own]
    if moved:  # torch work off this thread: its own OpenMP team would slow every decoding step 2x (core.threads)
        threads.in_own_thread(lambda: [_lay_out(layer, own) for layer in moved])
    use_packed_decode_attention(model, own_kernel=own)
    try:
        yield
    finally:
        for layer, (product, weight, pack, appended) in zip(layers, kept[0]):
            layer.rows_product, layer.qweight, layer.pack, layer.appended = product, weight, pack, appended
        use_packed_decode_attention(model, own_kernel=kept[1])


def _lay_out(layer, own: bool) -> None:
    """Put an Int8Linear on our kernel (its weight packed where it can be) or torch's (rows),
    without rows appended under it: an adapter's next reply appends its A again."""
    from core.inference import fast_decode, own_kernels

    rows = layer.qweight if layer.pack is None else own_kernels.unpack(layer.qweight, layer.in_features)
    packed = own_kernels.pack(rows) if own else None
    layer.qweight, layer.pack = (rows, None) if packed is None else (packed, own_kernels.pack)
    layer.rows_product, layer.appended = own_kernels.rows_times_int8 if own else fast_decode.rows_times_int8, None


def compare_timing(loaded, tuned, tokens: int, repeats: int) -> dict:
    """Median wall time of one pane (base, then tuned alone) and of Compare (both panes)."""
    from core.inference.chat import GenerationSettings, stream_reply
    from core.inference.compare import stream_compare

    settings = GenerationSettings(max_new_tokens=tokens, min_new_tokens=tokens)
    messages = [{"role": "user", "content": PROMPTS[1]}]
    runs = {
        "single_base_s": lambda: list(stream_reply(loaded, messages, settings)),
        "single_tuned_s": lambda: list(stream_reply(loaded, messages, settings, tuned.adapter_name)),
        "compare_s": lambda: list(stream_compare(loaded, tuned, messages, messages, settings)),
    }
    times = {name: [] for name in runs}
    for run in runs.values():
        run()  # warm-up
    for _ in range(repeats):
        for name, run in runs.items():  # interleaved, so that noise hits every path alike
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}
