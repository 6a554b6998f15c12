"""The topics pipeline on the real app server: gradio_client and Chromium."""
from __future__ import annotations

import json

import pytest

from tests.browser import browser_page, shoot

pytestmark = pytest.mark.slow
SPEC = dict(source="guardian-headlines", upload=None, text_column="", label_column="", max_docs=800,
            embedder="all-MiniLM-L6-v2")


def test_topics_pipeline_over_the_api(app_server):
    from gradio_client import Client

    client = Client(app_server, verbose=False)
    info = client.predict(*SPEC.values(), api_name="/embed")
    assert "**800 documents**" in info and "Using 800 of 4080" in info
    message, table, *figures = client.predict(*SPEC.values(), "fast", 10, api_name="/topics")
    assert message.startswith("10 topics over 800 documents")
    assert len(table["data"]) >= 10
    plots = [json.loads(figure["plot"]) for figure in figures]  # Gradio's plotly payload
    assert len(plots) == 5 and all(plot["data"] for plot in plots), [list(plot) for plot in plots]
    info = client.predict(*{**SPEC, "source": "chatterbot"}.values(), "logreg", api_name="/classify")
    assert "Accuracy" in info[0]


@pytest.mark.browser
def test_topics_render_in_browser(app_server):
    with browser_page(app_server) as page:
        page.get_by_role("tab", name="Embeddings & topics").click()
        page.get_by_label("Document cap").fill("800")
        page.get_by_role("tab", name="Topics", exact=True).click()
        page.locator("#fit-topics").click()
        page.wait_for_function("() => document.querySelector('#topic-info')?.innerText.includes('topics over')",
                               timeout=180_000)
        page.locator("#topic-topics .js-plotly-plot").wait_for(timeout=60_000)
        page.get_by_role("tab", name="Barchart").click()
        page.locator("#topic-barchart .js-plotly-plot").wait_for(timeout=30_000)
        shoot(page, "topics.png", full_page=True)
        page.get_by_role("button", name="Export CSV + HTML").click()
        link = page.locator("a[data-testid='download-link'][href*='topics.csv']").first
        link.wait_for(timeout=60_000)
        assert "Topic" in page.request.get(link.get_attribute("href")).text().splitlines()[0]
