"""Runs in TensorBoard and trackio: `assert_tracked` reads a real run's curve and held-out
figures back through each tracker's own reader (called from test_training.py's recipe runs,
which train anyway); the Runs section's trackio link starts the dashboard once, and a visitor of
a public app is refused."""
from __future__ import annotations

import httpx
import pytest


def assert_tracked(run_dir, cfg, info: dict) -> None:
    """report_to: the loss curve and the held-out figures, read back by TensorBoard's and
    trackio's own readers, are the run's."""
    from core.runs import RunFolder
    from training.progress import read_log

    losses = [entry["loss"] for entry in read_log(RunFolder(run_dir)) if entry.get("loss") is not None]
    after = info["held_out"][0]["after"]
    if cfg.report_to == "tensorboard":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(RunFolder(run_dir).tensorboard_dir))
        events.Reload()
        assert [event.value for event in events.Scalars("train/loss")] == pytest.approx(losses, rel=1e-5)
        assert events.Scalars("held-out_perplexity/after")[0].value == pytest.approx(after, rel=1e-4)
    elif cfg.report_to == "trackio":
        from trackio.sqlite_storage import SQLiteStorage

        logs = SQLiteStorage.get_logs("finetune-lab", run_dir.name)
        assert [log["train/loss"] for log in logs if "train/loss" in log] == pytest.approx(losses, rel=1e-5)
        assert [log["held-out_perplexity/after"] for log in logs if "held-out_perplexity/after" in log] == \
            pytest.approx([after], rel=1e-4)
    else:
        assert not RunFolder(run_dir).tensorboard_dir.exists()


def test_the_runs_section_opens_trackios_dashboard_once(monkeypatch, data_home):
    from tabs import trackio_link

    try:
        first = trackio_link.open_trackio()
        url = first.split("](", 1)[1].split(")", 1)[0]
        assert url.startswith("http://127.0.0.1:") and "project=finetune-lab" in url and "write_token" not in first
        assert httpx.get(url, timeout=30).status_code == 200
        process = trackio_link._DASHBOARD["process"]
        assert trackio_link.open_trackio() == first and trackio_link._DASHBOARD["process"] is process  # once
        monkeypatch.setenv("FINETUNE_LAB_PUBLIC", "1")
        assert trackio_link.open_trackio().startswith("⚠️ Log in to do opening trackio")
    finally:
        if trackio_link._DASHBOARD.get("process"):
            trackio_link._DASHBOARD["process"].kill()
