"""One owner of a run folder: its name check, its files, and what they say about the run.

    python -c "from core.runs import finished_runs; print([r.name for r in finished_runs()])"

A run folder (under <data dir>/runs/) holds config.yaml, log.jsonl, checkpoints/, adapter/
(renamed into place only when complete), held_out.jsonl (the held-out rows), eval.json,
report.json/.md, manifest.json, and while
a job runs job.json and stderr.log; status.json says how the last attempt ended; merged/ once
the adapter is exported merged into its base. Every other
module asks RunFolder for these paths: no file name is spelled anywhere else.

The manifest is a `Manifest`: what was trained and what it measured. Its held-out figures are
`Measure`s that the run's objective chose and that render themselves, so nothing that shows a
run (the Train tab, the CLI, the model card, run comparison) needs to know which objective ran.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from core.errors import LabError
from core.paths import check_name, runs_dir, write_json


# Trainer writes a checkpoint's weights, then optimizer and scheduler, then trainer_state.json
# last: a kill inside a save leaves a folder without it, or with half of it.
CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")
WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")
PROMPT_FORMAT_FILE = "prompt_format.json"  # in adapter/: the prompt format it was trained on
GENERATOR, EMBEDDER = "generator", "embedder"  # what a run makes: a model to chat with, or an embedder


@dataclass
class Measure:
    """One held-out figure, before and after training (`better`: "lower" or "higher")."""

    label: str
    before: float | None
    after: float | None
    better: str = "lower"

    def line(self) -> str:
        return f"{self.label} {self.before} → {self.after}"

    def card_row(self) -> str:
        return f"| {self.label} | {self.before} | {self.after} |"


@dataclass
class Manifest:
    """What a finished run trained and measured (manifest.json)."""

    name: str
    model: str
    base_model: str
    objective: str
    adapter: str
    method: str
    dataset: str
    steps: int = 0
    base_weights: str = ""
    start_from: str | None = None
    dataset_revision: str | None = None
    world_size: int = 1
    precision: str = ""
    train_runtime_s: float = 0.0
    first_loss: float | None = None
    final_loss: float | None = None
    held_out: list[Measure] = field(default_factory=list)  # the objective's figures, headline first
    answer_scores: dict | None = None  # held-out answers scored against references (SFT)
    judged_blind: bool = False  # the report holds held-out pairs to judge blind against the start
    kind: str = GENERATOR  # GENERATOR: Chat's adapter picker lists it; EMBEDDER: the Embeddings tab's
    report: str | None = None
    vote_sources: dict | None = None  # rows per source, for votes exported for training (core.feedback.votes)
    created: str = ""

    @classmethod
    def from_dict(cls, data: dict) -> "Manifest":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["held_out"] = [Measure(**m) for m in data.get("held_out") or []] or _legacy_measures(data)
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)

    def held_out_line(self) -> str:
        """The held-out figures in one line, e.g. "held-out perplexity 12.1 → 3.4"."""
        return " · ".join(m.line() for m in self.held_out) or "no held-out rows"

    def headline(self) -> Measure | None:
        return self.held_out[0] if self.held_out else None


def _legacy_measures(data: dict) -> list[Measure]:
    """Manifests written before `held_out` existed kept each figure under its own key."""
    legacy = (("perplexity", "held-out perplexity", "lower"),
              ("reward_accuracy", "held-out reward accuracy (chosen over rejected)", "higher"),
              ("general_perplexity", "perplexity on general text (forgetting)", "lower"))
    return [Measure(label, data.get(f"{key}_before"), data.get(f"{key}_after"), better)
            for key, label, better in legacy if data.get(f"{key}_after") is not None]


@dataclass(frozen=True)
class RunFolder:
    path: Path

    @classmethod
    def named(cls, name: str) -> "RunFolder":
        """The folder for run `name` (checked as a safe name); it may not exist yet."""
        return cls(runs_dir() / check_name(name, "run name"))

    @classmethod
    def existing(cls, name: str) -> "RunFolder":
        run = cls.named(name)
        if not run.path.is_dir():
            raise LabError(f"No run named '{name}'.")
        return run

    @property
    def name(self) -> str:
        return self.path.name

    config = property(lambda self: self.path / "config.yaml")
    log = property(lambda self: self.path / "log.jsonl")
    checkpoints = property(lambda self: self.path / "checkpoints")
    adapter = property(lambda self: self.path / "adapter")
    adapter_partial = property(lambda self: self.path / ".adapter.partial")
    eval_scores = property(lambda self: self.path / "eval.json")
    held_out_rows = property(lambda self: self.path / "held_out.jsonl")  # the rows held out, as trained
    report_json = property(lambda self: self.path / "report.json")
    report_md = property(lambda self: self.path / "report.md")
    manifest_file = property(lambda self: self.path / "manifest.json")
    status_file = property(lambda self: self.path / "status.json")
    plan_file = property(lambda self: self.path / "plan.json")  # effective batch and tokens per step
    tensorboard_dir = property(lambda self: self.path / "tensorboard")  # event files, with report_to: tensorboard
    phase_file = property(lambda self: self.path / "phase.json")  # what a live run does outside its steps
    job_file = property(lambda self: self.path / "job.json")
    process_log = property(lambda self: self.path / "stderr.log")
    stop_marker = property(lambda self: self.path / "stop-requested")
    effect_file = property(lambda self: self.path / "effect.json")  # training.effect: where tuning helped or hurt
    merged = property(lambda self: self.path / "merged")  # training.export: adapter merged into its base

    def gguf_dir(self, quant: str) -> Path:
        """training.gguf_export's output for one tensor type: the .gguf file and its Modelfile."""
        return self.path / f"gguf-{quant}"

    def manifest(self) -> Manifest | None:
        """The finished run's manifest; None before the run has finished (or for a torn file)."""
        data = read_json(self.manifest_file)
        try:
            return Manifest.from_dict(data) if data else None
        except TypeError:  # not a manifest this code wrote
            return None

    def write_manifest(self, manifest: Manifest) -> None:
        write_json(self.manifest_file, manifest.to_dict())

    def save_held_out(self, rows: list[dict]) -> None:
        """Keep the held-out rows as the run split them, so a later evaluation reads the same rows
        without rebuilding the dataset (whose source may have changed or gone)."""
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        tmp = self.held_out_rows.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(self.held_out_rows)

    def read_held_out(self) -> list[dict] | None:
        if not self.held_out_rows.is_file():
            return None  # a run trained before the rows were kept
        return [json.loads(line) for line in self.held_out_rows.read_text(encoding="utf-8").splitlines() if line]

    def status(self) -> dict:
        """How the last attempt ended ({} while running, or when it was killed)."""
        return read_json(self.status_file)

    def settings(self) -> dict:
        """The run's settings as its config.yaml holds them (known from the start, not only when
        done); {} when it has none that can be read."""
        import yaml

        try:
            settings = yaml.safe_load(self.config.read_text())
        except (OSError, yaml.YAMLError):
            return {}
        return settings if isinstance(settings, dict) else {}

    @property
    def objective(self) -> str:
        return str(self.settings().get("objective", ""))

    @property
    def is_finished(self) -> bool:
        """Training completed: `adapter/` (renamed into place when whole) and the manifest exist."""
        return self.adapter.is_dir() and self.manifest_file.is_file()

    @property
    def is_lora(self) -> bool:
        return (self.adapter / "adapter_config.json").is_file()

    def report(self) -> str:
        return self.report_md.read_text() if self.report_md.is_file() else ""

    def latest_complete_checkpoint(self) -> Path | None:
        """The newest complete checkpoint. Torn ones (a kill during a save) are removed, with a
        note, so neither the resume nor trainer's checkpoint rotation trips over them."""
        found = sorted(self.checkpoints.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])) \
            if self.checkpoints.is_dir() else []
        for checkpoint in reversed(found):
            if is_complete_checkpoint(checkpoint):
                return checkpoint
            print(f"note: skipping {checkpoint.name}: a save was cut short (no complete trainer state); "
                  "removing it", flush=True)
            shutil.rmtree(checkpoint, ignore_errors=True)
        return None


def is_complete_checkpoint(folder: Path) -> bool:
    if not all((folder / name).is_file() for name in CHECKPOINT_FILES):
        return False
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        return False
    try:
        json.loads((folder / "trainer_state.json").read_text())
    except ValueError:
        return False
    return True


def all_runs() -> list[RunFolder]:
    """Every run folder (one with a config.yaml), newest first."""
    folders = [p for p in runs_dir().iterdir() if p.is_dir() and (p / "config.yaml").is_file()]
    return [RunFolder(p) for p in sorted(folders, key=lambda p: p.stat().st_mtime, reverse=True)]


def finished_runs(kind: str | None = None) -> list[RunFolder]:
    """Runs whose training completed, newest first; only those that make `kind` if given
    (GENERATOR: adapters or models to chat with; EMBEDDER: tuned embedders)."""
    done = [run for run in all_runs() if run.is_finished]
    if kind is None:
        return done
    return [run for run in done if (manifest := run.manifest()) is not None and manifest.kind == kind]


def write_prompt_format(adapter: Path, prompt_format: str | None) -> None:
    """Record in an adapter folder the prompt format it was trained on, when it is not the
    model's chat template (plain "Question:/Answer:" text), so Chat prompts it the same way
    wherever the folder goes (the Hub too)."""
    if prompt_format:
        write_json(adapter / PROMPT_FORMAT_FILE, {"prompt_format": prompt_format})


def read_prompt_format(adapter: Path) -> str | None:
    return read_json(adapter / PROMPT_FORMAT_FILE).get("prompt_format")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
