"""Write a run's model as one GGUF file for llama.cpp, LM Studio and Ollama, with a Modelfile.

    python cli.py export --run RUN --format gguf --quant q8_0   # -> <data dir>/runs/RUN/gguf-q8_0/

A LoRA/QLoRA run is merged first (training.export); a full fine-tune is already a model folder.
Tensor names come from the `gguf` package's own map (`get_tensor_name_map`), and the layout
changes follow llama.cpp's converter, which transformers' GGUF loader undoes on the way back:
Llama's q/k rows are permuted for its rotary layout, and Gemma's norms are stored as 1 + w.

The tokenizer goes in as metadata. A GPT-2-style BPE tokenizer (SmolLM2) is written from the
model folder with the package's `BpeVocab` and `SpecialVocab` (merges, special ids, chat
template). llama.cpp names a BPE pre-tokenizer by a hash it keeps itself, and a SentencePiece
vocabulary (Gemma) needs scores a tokenizer.json does not hold, so those come from the GGUF the
base was converted from when there is one (both offline defaults); otherwise the export says so.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from core.errors import LabError
from core.runs import RunFolder
from training.export import Export, merge_run
from training.modelfile import write_modelfile

# Tensor type for 2-D weights; 1-D norms stay f32, as llama.cpp keeps them.
QUANTS = ("f16", "bf16", "q8_0", "q4_0")
ARCHITECTURES = {"llama": "LLAMA", "gemma3_text": "GEMMA3"}


def export_gguf(run_name: str, quant: str = "q8_0", progress=None) -> Export:
    """Write run `run_name` as `<run>/gguf-<quant>/<run>-<quant>.gguf`, with a Modelfile beside it."""
    from transformers import AutoTokenizer

    if quant not in QUANTS:
        raise LabError(f"quant={quant!r}: choose one of {', '.join(QUANTS)}.")
    run = RunFolder.existing(run_name)
    note = progress or (lambda fraction, desc="": None)
    start = time.perf_counter()
    folder = _model_folder(run, note)
    out_dir = run.gguf_dir(quant)
    out_dir.mkdir(exist_ok=True)
    target = out_dir / f"{run.name}-{quant}.gguf"
    write_gguf(folder, target, quant, _origin_gguf(run), note)
    write_modelfile(out_dir, target.name, AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False))
    note(1.0, "Done")
    return Export(out_dir, time.perf_counter() - start)


def write_gguf(folder: Path, target: Path, quant: str, origin: Path | None = None, note=None) -> Path:
    """Write the plain model folder `folder` as the GGUF file `target`. `origin`: the packaged GGUF
    its weights came from, whose tokenizer fields a SentencePiece-style tokenizer needs."""
    import gguf
    from transformers import AutoTokenizer

    note = note or (lambda fraction, desc="": None)
    config = json.loads((folder / "config.json").read_text())
    arch = _architecture(config)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    partial = target.with_name(f".{target.name}.partial")
    writer = gguf.GGUFWriter(str(partial), gguf.MODEL_ARCH_NAMES[arch])
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(target.stem.removesuffix(f"-{quant}"))
        _write_hparams(writer, config, arch, quant)
        _write_tokenizer(writer, folder, tokenizer, origin)
        note(0.5, f"Converting tensors to {quant}")
        _write_tensors(writer, folder, config, arch, quant)
        note(0.9, "Writing the file")
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(partial, target)  # a crash never leaves a half-written .gguf under the real name
    return target


def _model_folder(run: RunFolder, note) -> Path:
    """The plain model folder to convert: the merged adapter (merged now if needed) or the full model."""
    if not run.is_finished:
        raise LabError(f"Run '{run.name}' has not finished training: nothing to export yet.")
    if not run.is_lora:
        return run.adapter
    if (run.merged / "config.json").is_file():
        return run.merged
    note(0.05, "Merging the adapter into its base")
    return merge_run(run.name, "bf16").folder


def _architecture(config: dict):
    import gguf

    model_type = config.get("model_type", "?")
    if model_type not in ARCHITECTURES:
        raise LabError(f"GGUF export knows the Llama (e.g. SmolLM2) and Gemma 3 architectures; this model "
                       f"is '{model_type}'. Use llama.cpp's convert_hf_to_gguf.py on the merged folder.")
    return getattr(gguf.MODEL_ARCH, ARCHITECTURES[model_type])


def _rope_theta(config: dict) -> float:
    """rope_theta of the full-attention layers, from either shape transformers writes."""
    rope = config.get("rope_parameters") or {}
    rope = rope.get("full_attention", rope)
    return float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))


def _write_hparams(writer, config: dict, arch, quant: str) -> None:
    import gguf

    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config.get("num_key_value_heads", config["num_attention_heads"]))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(_rope_theta(config))
    if arch == gguf.MODEL_ARCH.LLAMA:
        writer.add_vocab_size(config["vocab_size"])
        writer.add_rope_dimension_count(head_dim)
    else:  # Gemma 3: llama.cpp reads the head size and the sliding window from these keys
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_sliding_window(config["sliding_window"])
    file_types = {"f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0"}
    writer.add_file_type(getattr(gguf.LlamaFileType, file_types[quant]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _origin_gguf(run: RunFolder) -> Path | None:
    """The packaged GGUF the run's base model was converted from, if it was."""
    from core.inference.models import find_spec
    from training.config import load_config

    spec = find_spec(load_config(run.config).model)
    return spec.offline_gguf() if spec else None


def _write_tokenizer(writer, folder: Path, tokenizer, origin: Path | None) -> None:
    import gguf

    tokenizer_json = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    model = tokenizer_json["model"]
    origin_fields = _tokenizer_fields(origin) if origin else {}
    if model["type"] == "BPE" and not model.get("byte_fallback"):
        tokens, types = bpe_vocabulary(folder, tokenizer_json)
        writer.add_tokenizer_model("gpt2")
        pre = origin_fields.get("tokenizer.ggml.pre")
        writer.add_tokenizer_pre(pre[0] if pre else "default")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_add_space_prefix(False)
    elif "tokenizer.ggml.scores" in origin_fields:
        for key in ("model", "pre", "tokens", "scores", "token_type", "add_space_prefix"):
            if f"tokenizer.ggml.{key}" in origin_fields:
                writer.add_key_value(f"tokenizer.ggml.{key}", *origin_fields[f"tokenizer.ggml.{key}"])
        tokens = origin_fields["tokenizer.ggml.tokens"][0]
    else:
        raise LabError("This model's tokenizer is SentencePiece-style, whose scores only its original "
                       "tokenizer.model holds: use llama.cpp's convert_hf_to_gguf.py on the merged folder.")
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens))
    bos, eos = _adds_bos_eos(tokenizer)  # transformers 5 may not save these flags
    special.add_special_token.setdefault("bos", bos)
    special.add_special_token.setdefault("eos", eos)
    special.add_to_gguf(writer, quiet=True)  # merges, bos/eos/unk/pad ids, add_bos/eos flags, chat template


def _adds_bos_eos(tokenizer) -> tuple[bool, bool]:
    ids = tokenizer("a")["input_ids"]
    return (tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id,
            tokenizer.eos_token_id is not None and bool(ids) and ids[-1] == tokenizer.eos_token_id)


def bpe_vocabulary(folder: Path, tokenizer_json: dict) -> tuple[list[str], list[int]]:
    """Token strings in id order, and their types: special added tokens are CONTROL."""
    import gguf

    vocab = gguf.vocab.BpeVocab(folder)
    tokens = [text.decode("utf-8") if isinstance(text, bytes) else text for text, _, _ in vocab.all_tokens()]
    added = {item["id"]: item for item in tokenizer_json.get("added_tokens", [])}
    types = [gguf.TokenType.NORMAL if i not in added else
             gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED
             for i in range(len(tokens))]
    return tokens, types


def _tokenizer_fields(origin: Path) -> dict:
    """The tokenizer.* fields of a GGUF as {key: Field}, each as GGUFWriter.add_key_value takes it."""
    from training.gguf_file import read_gguf

    return {key: field for key, field in read_gguf(origin).fields.items() if key.startswith("tokenizer.")}


def _write_tensors(writer, folder: Path, config: dict, arch, quant: str) -> None:
    import gguf
    from safetensors import safe_open

    names = gguf.get_tensor_name_map(arch, config["num_hidden_layers"])
    files = sorted(folder.glob("*.safetensors"))
    for file in files:
        with safe_open(str(file), framework="pt") as weights:
            for hf_name in weights.keys():
                if hf_name == "lm_head.weight" and config.get("tie_word_embeddings"):
                    continue  # llama.cpp reuses token_embd for a tied output layer
                name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise LabError(f"No GGUF name for tensor {hf_name}: the export cannot write this model.")
                data = _to_llama_cpp_layout(weights.get_tensor(hf_name).float(), name, config, arch)
                _add_tensor(writer, name, data.numpy(), quant)


def _to_llama_cpp_layout(tensor, name: str, config: dict, arch):
    import gguf

    if arch == gguf.MODEL_ARCH.LLAMA and (".attn_q." in name or ".attn_k." in name):
        heads = config["num_attention_heads"] if ".attn_q." in name else config["num_key_value_heads"]
        # llama.cpp rotates interleaved pairs; HF rotates the two halves of each head.
        return (tensor.reshape(heads, 2, tensor.shape[0] // heads // 2, *tensor.shape[1:])
                .swapaxes(1, 2).reshape(tensor.shape))
    if arch == gguf.MODEL_ARCH.GEMMA3 and name.endswith("norm.weight"):
        return tensor + 1  # Gemma's RMSNorm scales by 1 + w; llama.cpp's by w
    return tensor


def _add_tensor(writer, name: str, data, quant: str) -> None:
    import gguf
    import numpy as np

    if data.ndim < 2:
        writer.add_tensor(name, data.astype(np.float32))
        return
    if quant == "f16" or data.shape[-1] % 32:  # the block types need rows in blocks of 32
        writer.add_tensor(name, data.astype(np.float16))
        return
    # The tied embedding is also the output layer, the most sensitive matrix: q8_0 even in q4_0.
    kind = {"bf16": "BF16", "q8_0": "Q8_0", "q4_0": "Q8_0" if name == "token_embd.weight" else "Q4_0"}[quant]
    qtype = getattr(gguf.GGMLQuantizationType, kind)
    writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
