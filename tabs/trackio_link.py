"""The Runs section's link to trackio's own dashboard (a Gradio app) for the runs trained with
`report_to: trackio`: started once, on this machine, on the next free port; the link is its
read-only address. The CLI twin: `trackio show --project finetune-lab`.
"""
from __future__ import annotations

import re
import subprocess
import sys
import threading
import time

from core.access import require_user
from core.errors import LabError
from tabs.feedback import shows_errors
from training.jobs import child_env
from training.tracking import PROJECT

LAUNCHED = re.compile(r"Trackio UI launched at: (http://\S+)")
_DASHBOARD: dict = {}  # "process", "url": the one dashboard this app started
_LOCK = threading.Lock()


@shows_errors()
def open_trackio(request=None) -> str:
    """A markdown link to the trackio dashboard, starting it the first time."""
    require_user(request, action="opening trackio")
    with _LOCK:
        process = _DASHBOARD.get("process")
        if process is None or process.poll() is not None:
            _DASHBOARD.update(process=_start(), url=None)
        if _DASHBOARD["url"] is None:
            _DASHBOARD["url"] = _wait_for_url(_DASHBOARD["process"], timeout=90)
    return f"[Open the trackio dashboard]({_DASHBOARD['url']}) (runs trained with `report_to: trackio`)"


def _start() -> subprocess.Popen:
    # BROWSER=true: trackio would open a browser tab on the server itself; no tokens reach it.
    env = {**child_env(1), "BROWSER": "true"}
    return subprocess.Popen([sys.executable, "-m", "trackio.cli", "show", "--project", PROJECT], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_url(process: subprocess.Popen, timeout: float) -> str:
    """The dashboard's read-only address, from its first lines (the write-token one is never shown)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            raise LabError("trackio's dashboard did not start: is trackio installed? (pip install trackio)")
        found = LAUNCHED.search(re.sub(r"\x1b\[[0-9;]*m", "", line))
        if found:  # keep reading its output, so a full pipe never blocks it
            threading.Thread(target=process.stdout.read, daemon=True).start()
            return found.group(1)
    raise LabError(f"trackio's dashboard did not start within {timeout:.0f} s.")
