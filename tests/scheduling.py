"""How `make test`'s two workers share the suite: which files run together on one worker, and
which start first. conftest.py imports these hooks.

Files that use one of SHARED_HEAVY_FIXTURES run on one worker (`--dist loadgroup`), so each
fixture is built once; every other file is a group of its own. Groups start longest first, by
the seconds a past run took (durations.json), so that no long test starts last while the
other worker sits idle; xdist's own order (most tests first) started the three longest single
tests last. In a file, the tests that need the tiny run go last. Record the seconds again after
a change in what the tests cost:

    FINETUNE_LAB_RECORD_DURATIONS=1 make test     # rewrites tests/durations.json
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import pytest

DURATIONS = Path(__file__).with_name("durations.json")
# A fixture's name maps to its group. The served app is one: an idle Gradio server takes about
# 2.6% of a core, and each worker that needs it starts one (and loads the model in it).
SHARED_HEAVY_FIXTURES = {"embed_run": "embedder", "smol_exports": "gguf-exports", "app_server": "served-app",
                         "space_votes": "served-app", "tiny_effect": "served-app"}
_seconds: dict[str, float] = defaultdict(float)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the marks into node ids
def pytest_collection_modifyitems(items):
    groups: dict[Path, str] = {}
    for item in items:
        heavy = [SHARED_HEAVY_FIXTURES[f] for f in item.fixturenames if f in SHARED_HEAVY_FIXTURES]
        if heavy or item.path not in groups:
            groups[item.path] = heavy[0] if heavy else item.path.name
    for item in items:
        item.add_marker(pytest.mark.xdist_group(groups[item.path]))
    past = past_seconds()
    files = {path: rank for rank, path in enumerate(dict.fromkeys(item.path for item in items))}
    # A group never timed starts first: it may be long, and starting a short one early costs little.
    # In a file, the tests that need the tiny run go last: the other worker is likely training it
    # (tiny_fixture.py), and this one has other work meanwhile instead of waiting.
    items.sort(key=lambda item: (-past.get(groups[item.path], float("inf")), files[item.path],
                                 "tiny_run" in item.fixturenames))  # stable: otherwise a file keeps its order


def past_seconds() -> dict[str, float]:
    """Each group's seconds in the run that last recorded them."""
    return json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}


def pytest_runtest_logreport(report):
    if "@" in report.nodeid:  # xdist names the group after the "@"
        _seconds[report.nodeid.rsplit("@", 1)[1]] += report.duration


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("FINETUNE_LAB_RECORD_DURATIONS") and not hasattr(session.config, "workerinput") and _seconds:
        # a partial run updates only its own groups
        timed = {**past_seconds(), **{group: round(seconds) for group, seconds in _seconds.items()}}
        DURATIONS.write_text(json.dumps(dict(sorted(timed.items())), indent=1) + "\n")
