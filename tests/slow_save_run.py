"""Test-only: `python -m training.run`, but each checkpoint save pauses halfway through.

    python -m tests.slow_save_run --config tiny --save_steps 2 ...

Trainer writes a checkpoint's weights, optimizer and scheduler, then its RNG state, then
trainer_state.json. Here the RNG step first touches `<run>/in-save` and sleeps, so a test can
SIGKILL the process at the worst moment: inside the save, before trainer_state.json exists.
"""
import sys
import time
from pathlib import Path

from transformers import Trainer

from training import run

_save_rng_state = Trainer._save_rng_state


def _slow_save_rng_state(self, output_dir):
    _save_rng_state(self, output_dir)
    marker = Path(self.args.output_dir).parent / "in-save"
    marker.write_text(str(output_dir))
    time.sleep(60)


if __name__ == "__main__":
    Trainer._save_rng_state = _slow_save_rng_state
    sys.exit(run.main())
