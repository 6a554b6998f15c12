"""Attach a tuned model to a loaded base for chat: a run's LoRA adapter onto the one copy of
the base weights, or a fully fine-tuned folder as a second model.

    from core.inference.adapters import attach_tuned
    tuned = attach_tuned(load_model("smollm2-135m-instruct"), "my-run")   # a run, folder or Hub id

Each adapter folder is attached once per base (peft names it adapter0, adapter1, ...), and
replies pick it per request (core.inference.chat). Only safetensors load; an adapter trained
on another base is refused with a one-line error.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core import threads
from core.inference.models import LoadedModel, ModelError, find_spec, load_model
from core.inference.qlora import as_trained, trained_on_4bit


@dataclass
class Tuned:
    """What the "tuned" side runs: a model, plus the peft adapter name when it is LoRA."""

    loaded: LoadedModel
    adapter_name: str | None
    chat_template: str | None = None  # the prompt format it was trained on, when not the base's


def adapter_folder(value: str) -> Path:
    """The folder an adapter box value names: a finished run's name, a folder path, or a Hub
    repo id (downloaded: safetensors and config only)."""
    from core.hub.source import HUB_REPO, download_adapter
    from core.runs import EMBEDDER, GENERATOR, finished_runs

    value = (value or "").strip()
    if not value:
        raise ModelError("Compare needs an adapter: pick one, type a folder path or a Hub repo id.")
    by_run = {run.name: run.adapter for run in finished_runs(GENERATOR)}
    folder = by_run.get(value) or Path(value).expanduser()
    if not folder.is_dir() and HUB_REPO.fullmatch(value):
        folder = download_adapter(value)
    if not folder.is_dir():
        if value in {run.name for run in finished_runs(EMBEDDER)}:
            raise ModelError(f"'{value}' tuned an embedder: it does not chat. Use it in Embeddings & topics "
                             f"(cli.py embed --embedder {value}).")
        raise ModelError(f"Adapter '{value}' is neither a finished run, a folder nor a Hub repo id.")
    return folder.resolve()


def attach_tuned(base: LoadedModel, value: str) -> Tuned:
    """Prepare the tuned side: attach a LoRA adapter to `base`, or load a full model folder."""
    folder = adapter_folder(value)
    four_bit = trained_on_4bit(folder)
    if four_bit is not None:  # a second model, as the adapter trained (core.inference.qlora)
        _check_same_base(base, base_model_of(folder))
        loaded = as_trained(base, folder, four_bit)
        return Tuned(loaded, None, trained_format(folder, loaded.tokenizer))
    if (folder / "adapter_config.json").is_file():
        return Tuned(base, _attach_lora(base, folder), trained_format(folder, base.tokenizer))
    if (folder / "config.json").is_file():
        loaded = load_model(str(folder))
        return Tuned(loaded, None, trained_format(folder, loaded.tokenizer))
    raise ModelError(f"'{value}' is neither a LoRA adapter (adapter_config.json) nor a model folder.")


def trained_format(folder: Path, tokenizer) -> str | None:
    """The prompt format an adapter was trained on, when it is not the base's own: the chat
    template saved with it (training's `chat_template: chatml`), or QA_FORMAT for a run that
    trained plain "Question:/Answer:" text (training records it in the adapter folder).
    None: the base's format (or nothing is known)."""
    import json

    from core.runs import read_prompt_format

    if not (folder / "tokenizer_config.json").is_file():
        return None  # an adapter from elsewhere, saved without its tokenizer
    jinja = folder / "chat_template.jinja"
    saved = jinja.read_text() if jinja.is_file() else json.loads(
        (folder / "tokenizer_config.json").read_text()).get("chat_template")
    if saved:
        return None if saved == tokenizer.chat_template else saved
    return read_prompt_format(folder)


def _attach_lora(base: LoadedModel, folder: Path) -> str:
    """Attach once per folder, under the model's lock (two sessions must not both pick 'adapter1');
    an attached adapter is found without it, as a running generation holds it to its end."""
    from peft import PeftModel

    if not (folder / "adapter_model.safetensors").is_file():
        raise ModelError(f"'{folder.name}' has no adapter_model.safetensors (only safetensors load).")
    trained_on = base_model_of(folder)
    _check_same_base(base, trained_on)
    key = str(folder)
    if key in base.adapters:  # attached already: no need to wait for the generation that holds the lock
        return base.adapters[key]
    from core.inference import compiled_decode  # torch's compiler: imported when a model is at hand

    compiled_decode.wait_until_settled(base)  # its warm-up runs the base layers peft is about to wrap
    with base.lock:
        if key in base.adapters:
            return base.adapters[key]
        name = f"adapter{len(base.adapters)}"
        try:
            if hasattr(base.model, "load_adapter") and base.adapters:
                threads.in_own_thread(base.model.load_adapter, str(folder), adapter_name=name)
            else:
                base.model = threads.in_own_thread(PeftModel.from_pretrained, base.model, str(folder),
                                                   adapter_name=name)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ModelError(
                f"Adapter '{folder.parent.name}' does not fit {base.name} (trained on "
                f"'{trained_on}'): {str(exc).splitlines()[0][:200]}"
            ) from None
        base.model.eval()
        base.adapters[key] = name
    return name


def base_model_of(folder: Path) -> str:
    """The base an adapter folder names (its Hub id, or the folder it was trained on)."""
    from peft import PeftConfig

    return PeftConfig.from_pretrained(str(folder)).base_model_name_or_path or ""


def _check_same_base(base: LoadedModel, trained_on: str) -> None:
    adapter_spec, base_spec = find_spec(Path(trained_on).name or trained_on), find_spec(base.name)
    if adapter_spec and base_spec and adapter_spec != base_spec:
        raise ModelError(
            f"This adapter was trained on {adapter_spec.name}, not on {base.name}: "
            "pick that base model to compare."
        )
