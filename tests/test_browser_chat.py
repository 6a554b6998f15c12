"""Chat in a real Chromium: a streamed reply, then Compare with a trained adapter."""
from __future__ import annotations

import pytest

from tests.browser import browser_page, shoot

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def send(page, text):
    box = page.get_by_placeholder("Ask something")
    box.fill(text)
    box.press("Enter")


def test_chat_and_compare_in_browser(app_server, tiny_run):
    with browser_page(app_server) as page:
        send(page, "What is the capital of France?")
        reply = page.locator("#base-chat [data-testid='bot']").last
        reply.wait_for(timeout=60_000)
        page.wait_for_function(
            "() => document.querySelector('#chat-status')?.innerText.includes('tok/s')", timeout=60_000)
        assert "Paris" in reply.inner_text()
        shoot(page, "chat-single.png")
        # Gradio's own Undo button on the pane takes the exchange back and returns the question
        # to the box (tabs.chat.rewind, which Retry and Edit share, is unit-tested in test_chat).
        page.locator("#base-chat button[aria-label='Undo']").last.click()
        page.wait_for_function("() => !document.querySelector(\"#base-chat [data-testid='bot']\")", timeout=30_000)
        assert "What is the capital of France?" not in page.locator("#base-chat").inner_text()
        assert page.get_by_placeholder("Ask something").input_value() == "What is the capital of France?"

        page.get_by_text("Clear").click()
        page.get_by_role("radio", name="Compare").check()
        picker = page.locator("#adapter-picker input")
        picker.fill(tiny_run.name)
        picker.press("Enter")
        send(page, "Who are you?")
        tuned = page.locator("#tuned-chat [data-testid='bot']").last
        tuned.wait_for(timeout=90_000)
        page.wait_for_function(
            "() => document.querySelector('#chat-status')?.innerText.includes('tuned:')", timeout=90_000)
        base_text = page.locator("#base-chat [data-testid='bot']").last.inner_text()
        assert base_text and tuned.inner_text() and base_text != tuned.inner_text()
        shoot(page, "chat-compare.png")


def test_first_visit_chat_and_train_data_at_once(tiny_run):
    """A fresh server, the commonest first step: ask at once, then open Train. The page load's
    dataset preview and the first chat's model load used to import transformers in two threads
    at once, and the preview failed ("module 'transformers' has no attribute ...")."""
    from tests.conftest import start_app

    proc, url = start_app()
    try:
        with browser_page(url) as page:
            send(page, "Hello!")
            page.get_by_role("tab", name="Train").click()
            summary = page.locator("#data-summary")
            page.wait_for_function("() => document.querySelector('#data-summary')?.innerText.includes('rows')",
                                   timeout=90_000)
            assert "72 rows" in summary.inner_text() and "could not be read" not in summary.inner_text()
            page.wait_for_function("() => document.body.innerText.includes(\"What's your name, assistant?\")",
                                   timeout=30_000)  # the first rows of identity, in the table
            page.get_by_role("tab", name="Chat").click()
            page.locator("#base-chat [data-testid='bot']").last.wait_for(timeout=90_000)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
