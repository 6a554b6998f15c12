"""Test-only: `python -m training.run`, but the second checkpoint save pauses halfway through.

    python -m tests.slow_save_run --config tiny --save_steps 3 ...

Trainer writes a checkpoint's weights, optimizer and scheduler, then its RNG state, then
trainer_state.json. Here, in the second save, the RNG step touches `<run>/in-save` and sleeps,
so a test can SIGKILL the process at the worst moment: inside that save, before its
trainer_state.json exists, with the first checkpoint complete to fall back to.
"""
import sys
import time
from pathlib import Path

from transformers import Trainer

from training import run

_save_rng_state = Trainer._save_rng_state


def _slow_save_rng_state(self, output_dir):
    _save_rng_state(self, output_dir)
    saves = sorted(Path(output_dir).parent.glob("checkpoint-*"))
    if len(saves) < 2:
        return
    marker = Path(self.args.output_dir).parent / "in-save"
    marker.write_text(str(output_dir))
    time.sleep(60)


if __name__ == "__main__":
    Trainer._save_rng_state = _slow_save_rng_state
    sys.exit(run.main())
