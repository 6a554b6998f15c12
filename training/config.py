"""TrainConfig: every setting of a training run, with one help line per field, as YAML.

    python -c "from training.config import load_config; print(load_config('training/recipes/tiny.yaml'))"

The objective (training/objectives/: sft, dapt, dpo, kto) decides the rows, the trainer and the
held-out figures; the adapter (full, lora, qlora) decides the peft/bitsandbytes settings.
`validate` checks the settings every run shares and asks the objective for its own.
"""
from __future__ import annotations

import importlib.util
import math
import re
import shutil
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import yaml

from core.data.columns import first_rows
from core.data.rows import checked_source
from core.errors import LabError
from core.explore.embedders import embedder_source
from core.inference.models import check_model_name
from training import objectives
from training.prepare import held_out_count

ADAPTERS = ("lora", "qlora", "full")
RECIPES_DIR = Path(__file__).parent / "recipes"


def _f(default, help: str, **choices):
    if default is list:
        return field(default_factory=list, metadata={"help": help, **choices})
    return field(default=default, metadata={"help": help, **choices})


@dataclass
class TrainConfig:
    """One training run. Field help strings feed the CLI --help and the Train tab's form."""

    model: str = _f("smollm2-135m-instruct", "Base model: a known name, Hub id or local folder")
    dataset: str = _f("identity", "A bundled dataset (identity, chatterbot, chatterbot:CATEGORY, "
                      "shakespeare), a csv/tsv/json/jsonl/parquet/txt/md file, or a Hub dataset "
                      "id: owner/name, owner/name:subset, owner/name@split")
    columns: str = _f("", "Column mapping when detection guesses wrong, e.g. 'question=Q,answer=A'")
    dataset_revision: str = _f("", "Hub datasets: the commit to load (empty: the newest, pinned into the run's "
                               "config when it starts, so a resume reads the same data)")
    objective: str = _f(objectives.DEFAULT, objectives.help_line(), choices=objectives.NAMES)
    adapter: str = _f("lora", "lora: small low-rank adapter; qlora: LoRA on a 4-bit NF4 base; "
                      "full: update every weight", choices=ADAPTERS)
    lora_r: int = _f(16, "LoRA rank: adapter capacity")
    lora_alpha: int = _f(32, "LoRA scale numerator (the update is scaled by alpha / r)")
    lora_dropout: float = _f(0.0, "LoRA dropout; 0 is best on CPU (dropout doubles step time)")
    lora_target: str = _f("all-linear", "Modules that get adapters: 'all-linear' or a comma list")
    quant_type: str = _f("nf4", "QLoRA 4-bit data type", choices=("nf4", "fp4"))
    double_quant: bool = _f(True, "QLoRA: also quantize the quantization constants")
    learning_rate: float = _f(2e-4, "Peak learning rate (LoRA ~2e-4, full ~2e-5)")
    lr_scheduler: str = _f("linear", "Learning-rate schedule after the warmup: linear: down to 0; "
                           "cosine: down to 0 along a half cosine; constant: flat",
                           choices=("linear", "cosine", "constant"))
    warmup: float = _f(0.0, "Warmup from 0 to the learning rate: below 1 a share of the steps "
                       "(0.03 = 3%), from 1 a number of steps")
    weight_decay: float = _f(0.0, "Decoupled weight decay (AdamW); 0.01-0.1 for full fine-tunes")
    optimizer: str = _f("adamw_torch_fused", "adamw_torch_fused: AdamW in fused kernels; adamw_torch: "
                        "plain AdamW; adafactor: less optimizer memory; sgd: no optimizer state",
                        choices=("adamw_torch_fused", "adamw_torch", "adafactor", "sgd"))
    max_grad_norm: float = _f(1.0, "Clip the gradient norm to this (0: no clipping)")
    neftune_alpha: float = _f(0.0, "SFT: NEFTune noise on the input embeddings (5 in the paper); 0: off")
    chat_template: str = _f("own", "How prompt rows (all but DAPT's) become text: own: the model's chat template "
                            "(plain Question:/Answer: when it has none); chatml: ChatML; "
                            "plain: Question:/Answer: text", choices=("own", "chatml", "plain"))
    epochs: float = _f(1.0, "Passes over the data (ignored when max_steps > 0)")
    max_steps: int = _f(-1, "Stop after this many optimizer steps (0 or -1: as many as epochs make)")
    batch_size: int = _f(4, "Rows per device per step")
    grad_accum: int = _f(1, "Gradient accumulation steps (effective batch = batch_size x this)")
    max_length: int = _f(256, "SFT: longest example in tokens; longer ones are truncated")
    block_size: int = _f(128, "DAPT: context window length in tokens")
    stride: int = _f(96, "DAPT: step between window starts; < block_size makes windows overlap")
    general_windows: int = _f(32, "DAPT: windows of general English whose perplexity, before and after, "
                              "shows forgetting")
    batching: str = _f("auto", "SFT batches: grouped (rows of similar length, little padding; fastest "
                       "on CPU), packed (rows packed padding-free; best on GPU), padded, or auto",
                       choices=("auto", "grouped", "packed", "padded"))
    beta: float = _f(0.1, "DPO, KTO: how far the model may move from the reference (higher stays closer)")
    start_from: str = _f("", "DPO, KTO: a finished LoRA/QLoRA run whose adapter the run continues "
                         "(SFT, then DPO); empty: a fresh adapter")
    eval_fraction: float = _f(0.1, "Share of rows held out for evaluation (perplexity)")
    eval_rows: int = _f(16, "SFT: held-out rows the base and the tuned model answer, scored by exact "
                        "match, ROUGE-L and MiniLM cosine against the reference (0: skip)")
    eval_seconds: float = _f(120.0, "SFT: stop answering held-out rows after this many seconds")
    eval_embedder: str = _f("all-MiniLM-L6-v2", "SFT: the embedder whose cosine scores held-out answers: the "
                            "packaged MiniLM, or a tuned embedder by its run name")
    max_rows: int = _f(0, "Use at most this many rows (0: all)")
    save_steps: int = _f(50, "Save a checkpoint every N steps")
    save_total_limit: int = _f(2, "Keep only the last K checkpoints")
    eval_steps: int = _f(0, "Evaluate every N steps (0: only before and after training)")
    logging_steps: int = _f(1, "Log loss every N steps")
    seed: int = _f(42, "Random seed for the split, shuffling and adapter init")
    precision: str = _f("auto", "auto: bf16 where the GPU or CPU multiplies it natively, "
                        "else fp16 on a GPU and fp32 on a CPU",
                        choices=("auto", "fp32", "bf16", "fp16"))
    gradient_checkpointing: bool = _f(False, "Trade ~25% speed for memory; only when memory binds")
    torch_compile: bool = _f(False, "Compile the decoder layers: ~1.25x faster steps after a "
                             "one-off compile (~35 s on 2 cores, ~7 s once cached); for long runs")
    threads: int = _f(0, "CPU threads for training, per process (0: all cores, shared among the processes)")
    processes: int = _f(1, "Training processes: 2 or more run the job under accelerate launch (DDP: NCCL "
                        "on GPUs, gloo on CPU); batch_size is per process")
    report_to: str = _f("none", "Also log the run to: tensorboard (event files in the run folder) or trackio "
                        "(a local project, 'finetune-lab')", choices=("none", "tensorboard", "trackio"))
    report_prompts: list = _f(list, "Prompts answered before/after training in the report "
                              "(empty: chosen from the dataset)")
    output_name: str = _f("", "Run folder name (empty: objective-adapter-dataset-time)")

    def validate(self) -> "TrainConfig":
        """Raise LabError naming the first impossible setting; return self when fine."""
        for f in fields(self):
            allowed = f.metadata.get("choices")
            if allowed and getattr(self, f.name) not in allowed:
                raise LabError(f"{f.name}={getattr(self, f.name)!r}: choose one of {', '.join(allowed)}.")
        if self.adapter == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
            raise LabError("adapter=qlora needs bitsandbytes: pip install bitsandbytes.")
        objective = objectives.get(self.objective)
        if not 0 <= self.eval_fraction < 0.5:
            raise LabError(f"eval_fraction={self.eval_fraction} must be in [0, 0.5).")
        self._check_whole_numbers()
        if self.torch_compile and not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
            raise LabError("torch_compile needs a C++ compiler (g++) for torch's inductor backend.")
        if self.max_steps < 1 and self.epochs <= 0:
            raise LabError("Set max_steps > 0 or epochs > 0.")
        if self.max_steps < -1:
            raise LabError(f"max_steps={self.max_steps}: use a number of steps, or 0 to train for `epochs`.")
        if not 0 <= self.lora_dropout < 1:
            raise LabError(f"lora_dropout={self.lora_dropout} must be in [0, 1).")
        for name in ("warmup", "weight_decay", "max_grad_norm", "neftune_alpha", "eval_rows", "eval_seconds",
                     "max_rows", "eval_steps", "threads"):
            if getattr(self, name) < 0:
                raise LabError(f"{name}={getattr(self, name)} must be 0 or more.")
        for name in ("learning_rate", "beta"):
            if not getattr(self, name) > 0:
                raise LabError(f"{name}={getattr(self, name)} must be above 0.")
        if self.start_from and not objective.continues_adapter:
            able = [name for name in objectives.NAMES if objectives.get(name).continues_adapter]
            raise LabError(f"start_from continues an adapter with {' or '.join(able)}: pick one, or clear it.")
        if self.dataset_revision and not re.fullmatch(r"[\w.-]{1,100}", self.dataset_revision):
            raise LabError(f"dataset_revision={self.dataset_revision[:40]!r}: use a commit id or a branch name.")
        from core.paths import check_name
        for name in ("output_name", "start_from"):
            if getattr(self, name):
                check_name(getattr(self, name), name)
        objective.check(self)
        return self

    def checked_for_start(self) -> "TrainConfig":
        """This config once all that can be checked before a run exists has passed: the
        settings, the model's name, the data's file (its path made absolute: a job runs in the
        repository's folder, a resume from anywhere), the embedder that scores its answers, and,
        from its first rows, that the data fits the objective and leaves a row to train on once
        one is held out. A LabError says the first problem; no run folder is left behind."""
        cfg = replace(self.validate(), dataset=checked_source(self.dataset))
        check_model_name(cfg.model)
        embedder_source(cfg.eval_embedder)  # a chat run's name: said now, not after the training
        if (first := first_rows(cfg.dataset, cfg.columns)) is not None:
            objective = objectives.get(cfg.objective)
            objective.check_columns(first.columns)
            if cfg.eval_fraction > 0:
                _check_held_out(objective, first, cfg)
        return cfg

    def _check_whole_numbers(self) -> None:
        """Counts of at least one, and a seed that numpy's seeding takes."""
        for name in ("lora_r", "lora_alpha", "batch_size", "grad_accum", "max_length", "block_size", "general_windows",
                     "save_steps", "save_total_limit", "logging_steps", "processes"):
            if getattr(self, name) < 1:
                raise LabError(f"{name}={getattr(self, name)} must be at least 1.")
        if not 0 <= self.seed < 2**32:
            raise LabError(f"seed={self.seed} must be between 0 and {2**32 - 1}.")

    def to_yaml(self) -> str:
        return yaml.safe_dump(asdict(self), sort_keys=False)


def _check_held_out(objective, first, cfg: TrainConfig) -> None:
    """A DataError, as `objective`'s split in the run would raise it, where the rows Start read
    leave none to train on once `eval_fraction` holds some out: too few rows; or, in a small file
    read whole, a split that cannot be made (a preference set whose rows all share one prompt:
    the votes on one question)."""
    if not objective.example_per_row or first.count is None:
        return
    n_eval = held_out_count(min(first.count, cfg.max_rows or first.count), cfg.eval_fraction)
    if first.every_row is not None and not cfg.max_rows:  # max_rows samples the rows: the run's to tell
        objective.split(first.every_row, n_eval, cfg.seed)  # on the rows as they are: prompts and labels


def field_types() -> dict[str, type]:
    """Field name -> its Python type (int, float, bool, str, list), resolved from the annotations."""
    return typing.get_type_hints(TrainConfig)


def field_help() -> dict[str, str]:
    """Field name -> help line, for forms and --help."""
    return {f.name: f.metadata["help"] for f in fields(TrainConfig)}


def config_from_dict(values: dict) -> TrainConfig:
    """Build and validate a TrainConfig; unknown keys are an error that names them."""
    known = {f.name: f for f in fields(TrainConfig)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise LabError(f"Unknown setting(s): {', '.join(unknown)}. Known: {', '.join(known)}.")
    types = field_types()
    cfg = TrainConfig(**{k: _coerce(k, types[k], v) for k, v in values.items()})
    return cfg.validate()


def _coerce(name: str, kind: type, value):
    """YAML and forms give strings where numbers are meant: cast to the field's type."""
    if kind is list:
        return [str(v) for v in value] if isinstance(value, list) else [
            line for line in str(value or "").splitlines() if line.strip()]
    if kind is bool:
        return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "on")
    if kind in (int, float):
        try:
            number = float(value) if not isinstance(value, bool) else math.nan  # yes/no is no count
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise LabError(f"{name}={value!r} is not a number.")
        if kind is int and not number.is_integer():  # a form's 2.0 is 2; 2.5 steps is no count
            raise LabError(f"{name}={value!r} must be a whole number.")
        return int(number) if kind is int else number
    return "" if value is None else str(value)


def load_config(path: str | Path, **overrides) -> TrainConfig:
    """Read a recipe YAML (a path or a recipe name) and apply overrides."""
    if not path or not str(path).strip():
        raise LabError(f"No recipe given; bundled: {', '.join(list_recipes())}.")
    path = Path(path)
    if not path.exists() and (RECIPES_DIR / f"{path.name}.yaml").exists():
        path = RECIPES_DIR / f"{path.name}.yaml"
    if not path.is_file():
        raise LabError(f"Recipe {path} not found; bundled: {', '.join(list_recipes())}.")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:  # a recipe written by hand
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise LabError(f"{path} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}.") from None
    if not isinstance(values, dict):
        raise LabError(f"{path} must be a YAML mapping of setting: value.")
    return config_from_dict({**values, **overrides})


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
