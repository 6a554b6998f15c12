"""Playwright helpers for the browser tests: the system Chromium, launched headless, and the
screenshots: every one lands in test-artifacts/, and the README's (one per tab, DOC_SHOTS) in
docs/screenshots/ too, so a suite run keeps the README's pictures current; a failed test's
page as failed-TEST.png."""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager

from tests.conftest import ARTIFACTS, ROOT

DOC_SHOTS = ("chat-compare.png", "train-running.png", "vote-revealed.png", "topics.png", "publish.png",
             "space-votes.png", "votes-pulled.png", "effect-map.png")

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]


def shoot(page, name: str, full_page: bool = False) -> None:
    """Screenshot `page` as test-artifacts/NAME (and docs/screenshots/NAME for the README's)."""
    page.screenshot(path=str(ARTIFACTS / name), full_page=full_page)
    if name in DOC_SHOTS:
        shutil.copyfile(ARTIFACTS / name, ROOT / "docs" / "screenshots" / name)


@contextmanager
def browser_page(url: str, ready: str = "text=Finetune Lab"):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url, wait_until="load")
        page.wait_for_selector(ready, timeout=60_000)
        try:
            yield page
        except Exception:  # what the page showed when the test failed: test-artifacts/failed-TEST.png
            test = os.environ.get("PYTEST_CURRENT_TEST", "test").split("::")[-1].split(" ")[0]
            page.screenshot(path=str(ARTIFACTS / f"failed-{test}.png"), full_page=True)
            raise
        finally:
            browser.close()


def pick(option) -> None:
    """Choose an option of an open Gradio dropdown. Its list is drawn `position: fixed` where the
    box stood when it opened; if the page above grows meanwhile (a re-attached run's curves, the
    data preview), a click, which scrolls to the option first, chased it out of the viewport
    (once in CI, for 30 s). The list chooses on the mousedown its options send it, which is
    what this sends, wherever the list is drawn."""
    option.wait_for(state="attached")
    option.dispatch_event("mousedown")
