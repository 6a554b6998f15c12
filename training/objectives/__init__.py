"""The training objectives, one module each (sft, dapt, dpo, kto, embed), behind training.objective's interface.

    python -c "from training.objectives import NAMES; print(NAMES)"

`get(name)` is the only way from a config's `objective` to its code: nothing outside this
package tests an objective's name.
"""
from __future__ import annotations

from core.errors import LabError
from training.objective import Objective
from training.objectives import dapt, dpo, embed, kto, sft

OBJECTIVES = {module.OBJECTIVE.name: module.OBJECTIVE for module in (sft, dapt, dpo, kto, embed)}
NAMES = tuple(OBJECTIVES)
DEFAULT = sft.OBJECTIVE.name
PAIRS = dpo.OBJECTIVE.name  # what "Train on my votes" sets: blind A/B pairs
THUMBS = kto.OBJECTIVE.name  # what "Train on my thumbs" sets: answers marked good or bad


def get(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise LabError(f"objective={name!r}: choose one of {', '.join(NAMES)}.") from None


def require_scored_answers(run_name: str, manifest) -> None:
    """Refuse, in one line, to score held-out answers of a run that has none to score."""
    if manifest is None or not get(manifest.objective).scores_answers:
        able = [name.upper() for name in NAMES if get(name).scores_answers]
        raise LabError(f"'{run_name}': held-out answers are scored for finished {', '.join(able)} runs only.")


def help_line() -> str:
    return "; ".join(objective.help for objective in OBJECTIVES.values())
