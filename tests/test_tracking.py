"""The Runs section's trackio link: the dashboard starts once, on this machine, and its link
opens; a visitor of a public app is refused. (The runs' own logging to TensorBoard and trackio is
checked on real runs in test_training.py.)"""
from __future__ import annotations

import httpx


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
