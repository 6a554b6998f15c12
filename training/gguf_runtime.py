"""Models that answer greedily and report their next-token choices, whatever runs them: a
transformers model (the adapter on its base, the merged folder) or an exported GGUF read by a
runtime this project did not write. Export parity (training.export_parity) compares them.

The GGUF runtime is llama.cpp, through llama-cpp-python, where it is installed (the optional
extra `pip install -r requirements-llamacpp.txt`; it compiles from source, so it is not in the
default install), and transformers' GGUF loader otherwise (it dequantizes to fp32, so it shows
what the file holds but not how llama.cpp computes with it). Each runner's `name` says which
ran; FINETUNE_LAB_GGUF_RUNTIME=llama.cpp|transformers picks one.

    from training.gguf_runtime import gguf_runner, load_gguf_model
    runner = gguf_runner(path, stop_ids={2}); print(runner.name, runner.greedy([1, 2, 3], 8))
    model = load_gguf_model(path)   # the file as a transformers model, fp32
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from dataclasses import dataclass, field

from core.errors import LabError
from core.settings import settings

LLAMA_CPP = "llama.cpp (llama-cpp-python {version}, {threads} threads)"
TRANSFORMERS = "transformers GGUF loader (dequantized to fp32)"


@dataclass
class TorchRunner:
    """A transformers model; `adapter_on=False` answers as the base under a LoRA adapter."""

    model: object
    name: str = "transformers"
    adapter_on: bool = True

    def _switch(self):
        if self.adapter_on or not hasattr(self.model, "disable_adapter"):
            return contextlib.nullcontext()
        return self.model.disable_adapter()

    def greedy(self, ids: list[int], new_tokens: int) -> list[int]:
        import torch

        with torch.inference_mode(), self._switch():
            out = self.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                      max_new_tokens=new_tokens, do_sample=False)
        return out[0, len(ids):].tolist()

    def choices(self, ids: list[int], answer: list[int]) -> list[int]:
        """The token this model picks at each position of `answer`, fed the answer so far."""
        import torch

        with torch.inference_mode(), self._switch():
            logits = self.model(torch.tensor([ids + answer])).logits[0, len(ids) - 1:-1]
        return logits.argmax(-1).tolist()

    @property
    def stop_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        return set(eos if isinstance(eos, list) else [] if eos is None else [eos])


@dataclass
class LlamaCppRunner:
    """A GGUF file in llama.cpp: the same greedy loop and forced choices, on its own kernels."""

    path: str
    stop_ids: set[int] = field(default_factory=set)
    context: int = 1024

    def __post_init__(self):
        import llama_cpp

        self.threads = max(1, min(os.cpu_count() or 1, 8))
        self.llm = llama_cpp.Llama(model_path=str(self.path), n_ctx=self.context, n_threads=self.threads,
                                   logits_all=True, verbose=False)
        self.stop_ids = set(self.stop_ids) | {self.llm.token_eos()}
        self.name = LLAMA_CPP.format(version=llama_cpp.__version__, threads=self.threads)

    def _logits(self, ids: list[int]):
        self.llm.reset()
        self.llm.eval(ids)
        return self.llm.scores[:len(ids)]

    def greedy(self, ids: list[int], new_tokens: int) -> list[int]:
        answer: list[int] = []
        next_id = int(self._logits(ids)[-1].argmax())
        while len(answer) < new_tokens:
            answer.append(next_id)
            if next_id in self.stop_ids or len(answer) == new_tokens:
                break
            self.llm.eval([next_id])
            next_id = int(self.llm.scores[self.llm.n_tokens - 1].argmax())
        return answer

    def choices(self, ids: list[int], answer: list[int]) -> list[int]:
        return self._logits(ids + answer)[len(ids) - 1:-1].argmax(-1).tolist() if answer else []

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)


def llama_cpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def gguf_runner(gguf, stop_ids: set[int]):
    """llama.cpp where llama-cpp-python is installed (or FINETUNE_LAB_GGUF_RUNTIME asks for it),
    else transformers' GGUF loader."""
    choice = settings().gguf_runtime
    if choice == "llama.cpp" and not llama_cpp_installed():
        raise LabError("FINETUNE_LAB_GGUF_RUNTIME=llama.cpp, but llama-cpp-python is not installed: "
                       "pip install -r requirements-llamacpp.txt")
    if choice == "llama.cpp" or (choice == "auto" and llama_cpp_installed()):
        return LlamaCppRunner(str(gguf), stop_ids)
    return TorchRunner(load_gguf_model(gguf), TRANSFORMERS)


def load_gguf_model(path):
    """A GGUF file as a transformers model in fp32 (core.assets' quick load)."""
    import torch

    from core.assets import load_gguf_model as load

    return load(path, dtype=torch.float32).eval()
