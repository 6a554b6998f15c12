"""The whole Train flow in Chromium: start, live curve, reload mid-run, result, compare in Chat."""
from __future__ import annotations

import hashlib

import pytest

from tests.browser import browser_page, pick, shoot
from tests.conftest import ADMIN_KEY
from training.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def progress_step(page) -> int:
    text = page.locator("#train-progress").inner_text()
    return int(text.split("step ")[1].split("/")[0])


def unlock(page):
    page.locator("#admin-key input").fill(ADMIN_KEY)
    page.locator("#admin-key input").press("Enter")
    page.get_by_text("Unlocked").wait_for(timeout=30_000)


def test_train_reload_and_compare_in_browser(app_server, tiny_run):
    """The owner of a public app unlocks with the admin key, starts from the form, reloads."""
    with browser_page(app_server) as page:
        unlock(page)
        page.get_by_role("tab", name="Train").click()
        page.locator("#cfg-dataset input").fill("identity")
        page.locator("#cfg-dataset input").press("Enter")
        page.get_by_text("detected format: qa").wait_for(timeout=30_000)
        page.get_by_label("Recipe (loads its settings)").fill("tiny")
        pick(page.get_by_role("option", name="tiny"))
        # The recipe fills every field, output_name included; on a busy machine its answer can
        # land after a name typed at once and blank it, so wait until it has been applied.
        page.get_by_text("Advanced", exact=True).click()
        page.wait_for_function("() => document.querySelector('#cfg-max_steps input')?.value === '6'",
                               timeout=30_000)
        name = page.locator("#cfg-output_name textarea, #cfg-output_name input").first
        # No answers scored (the tiny fixture's run checks those): what is tested here is the page.
        rows = page.locator("#cfg-eval_rows input").first
        for _ in range(3):  # a late answer of the recipe's events can blank a name typed meanwhile
            name.fill("browser-run")
            rows.fill("0")
            page.wait_for_timeout(1000)
            if name.input_value() == "browser-run" and rows.input_value() == "0":
                break
        assert name.input_value() == "browser-run" and rows.input_value() == "0"
        page.locator("#cfg-adapter").get_by_role("radio", name="lora", exact=True).check()
        page.locator("#cfg-lr_scheduler").get_by_role("radio", name="cosine", exact=True).check()
        page.locator("#train-start").click()
        page.wait_for_function("() => /Started|⚠️/.test(document.querySelector('#train-message')?.innerText)",
                               timeout=30_000)
        message = page.locator("#train-message").inner_text()
        assert "Started browser-run" in message, message
        # Until the first poll after Start the panel still shows the newest earlier run (the tiny
        # fixture, at its last step): wait for the new run's name first.
        page.wait_for_function("() => document.querySelector('#train-stats')?.innerText.includes('browser-run')",
                               timeout=60_000)
        # Step 2 or later: the poll runs every 2 s, and on a fast host steps can pass between two
        # polls (one CI run waited 240 s for "step 2/" after the page had jumped past it).
        page.wait_for_function("() => +(/step (\\d+)\\//.exec(document.querySelector('#train-progress')?.innerText)"
                               " || [0, 0])[1] >= 2", timeout=240_000)
        page.locator("#loss-plot .js-plotly-plot").wait_for(timeout=30_000)
        shoot(page, "train-running.png", full_page=True)
        before = progress_step(page)

        page.reload(wait_until="load")  # a new session: re-attaching needs no login
        page.get_by_role("tab", name="Train").click()
        page.wait_for_function("() => document.querySelector('#train-stats')?.innerText.includes('browser-run')",
                               timeout=60_000)
        assert progress_step(page) >= before, "the reloaded page must re-attach to the same run"
        page.locator("#loss-plot .js-plotly-plot").wait_for(timeout=30_000)
        shoot(page, "train-reattached.png", full_page=True)

        page.locator("#train-result").get_by_text("Before/after").wait_for(timeout=400_000)
        result = page.locator("#train-result").inner_text()
        assert "Who are you?" in result and "Tuned:" in result
        shoot(page, "train-result.png", full_page=True)

        page.get_by_role("tab", name="Chat").click()
        page.get_by_role("radio", name="Compare").check()
        page.locator("#adapter-picker input").click()
        pick(page.get_by_role("option", name="browser-run").first)
        box = page.get_by_placeholder("Ask something")
        box.fill("Who are you?")
        box.press("Enter")
        page.wait_for_function(
            "() => document.querySelector('#chat-status')?.innerText.includes('tuned:')", timeout=120_000)
        base = page.locator("#base-chat [data-testid='bot']").last.inner_text()
        tuned = page.locator("#tuned-chat [data-testid='bot']").last.inner_text()
        assert base and tuned and base != tuned
        shoot(page, "train-then-compare.png", full_page=True)

        page.get_by_role("tab", name="Publish").click()  # the finished run is offered to publish
        page.get_by_role("button", name="↻").click()  # it finished after the page loaded
        page.wait_for_timeout(1500)
        page.get_by_label("Finished run").click()
        pick(page.get_by_role("option", name="browser-run").first)
        page.get_by_text("Export: a merged model, or GGUF").click()
        shoot(page, "publish.png")

        page.get_by_role("tab", name="Train").click()  # the run against the tiny fixture: curves and diff
        page.get_by_text("Runs", exact=True).click()
        page.get_by_text("Compare runs", exact=True).click()
        for name in ("browser-run", tiny_run.name):
            page.locator("#compare-runs input").click()
            pick(page.get_by_role("option", name=name, exact=True))
        page.locator("#compare-go").click()
        page.wait_for_function("() => document.querySelector('#compare-line')?.innerText.includes('differ')",
                               timeout=30_000)
        page.locator("#compare-plot .js-plotly-plot").wait_for(timeout=30_000)
        names = page.locator("#compare-plot .legendtext").all_text_contents()  # SVG: no innerText
        assert "browser-run" in names and tiny_run.name in names, names
        diff = page.locator("#compare-diff").inner_text()
        assert "lr_scheduler" in diff and "cosine" in diff and "linear" in diff and "learning_rate" not in diff
        shoot(page, "train-compare-runs.png", full_page=True)


def test_yaml_download_is_served_with_the_data_dir_outside_temp(app_server, data_home):
    """The 'Equivalent CLI command and YAML' file downloads, wherever the data dir is."""
    with browser_page(app_server) as page:
        page.get_by_role("tab", name="Train").click()
        page.get_by_label("Recipe (loads its settings)").fill("tiny")
        pick(page.get_by_role("option", name="tiny"))
        page.get_by_text("Equivalent CLI command and YAML").click()
        # The file is named by its text (tabs/train.py cli_preview): wait for the recipe's own
        # link, then check it stays (a stale answer once replaced it under load).
        want = load_config("tiny").to_yaml()
        name = f"train-config-{hashlib.sha1(want.encode()).hexdigest()[:10]}.yaml"
        link = page.locator(f"a[data-testid='download-link'][href*='{name}']").first
        link.wait_for(timeout=60_000)
        page.wait_for_timeout(2_000)
        body = page.request.get(link.get_attribute("href", timeout=5_000)).text()
        assert body == want, body  # the whole recipe, nothing of the defaults
        shoot(page, "train-yaml-download.png", full_page=True)


def test_train_the_embedder_recipe_and_open_its_maps(app_server):
    """objective=embed from the form: the recipe trains MiniLM out of process, and the Result
    shows the held-out figures and the before/after maps; the Embeddings tab then offers it."""
    with browser_page(app_server) as page:
        unlock(page)
        page.get_by_role("tab", name="Train").click()
        page.get_by_label("Recipe (loads its settings)").fill("embed_chatterbot")
        pick(page.get_by_role("option", name="embed_chatterbot"))
        page.get_by_text("Advanced", exact=True).click()
        page.wait_for_function("() => document.querySelector('#cfg-max_steps input')?.value === '60'",
                               timeout=30_000)
        page.locator("#cfg-max_steps input").fill("20")
        name = page.locator("#cfg-output_name textarea, #cfg-output_name input").first
        name.fill("browser-embed")
        assert page.locator("#cfg-objective").get_by_role("radio", name="embed", exact=True).is_checked()
        page.locator("#train-start").click()
        page.wait_for_function("() => document.querySelector('#train-message')?.innerText.includes('Started')",
                               timeout=30_000)
        page.wait_for_function("() => /browser-embed[\\s\\S]*NMI|NMI[\\s\\S]*browser-embed/"
                               ".test(document.querySelector('#train-result')?.innerText)", timeout=400_000)
        page.locator("#embedding-maps .js-plotly-plot").wait_for(timeout=30_000)
        assert "tuned embedder" in page.locator("#embedding-maps").inner_text()
        shoot(page, "train-embedder-maps.png", full_page=True)
        page.get_by_role("tab", name="Embeddings & topics").click()
        page.locator("#embedder input").click()
        page.get_by_role("option", name="browser-embed").wait_for(timeout=30_000)


def test_open_the_effect_map_and_click_a_topic(app_server, tiny_run, tiny_effect):
    """The tiny run's effect map (computed as a job by the fixture) in the Result panel: the map,
    a click on a topic lists its rows with both answers, and the rows export."""
    with browser_page(app_server) as page:
        unlock(page)
        page.get_by_role("tab", name="Train").click()
        page.get_by_text("Runs", exact=True).click()
        page.get_by_label("Run name").fill(tiny_run.name)
        page.get_by_role("button", name="Open", exact=True).click()
        page.get_by_text("5 · Where tuning helped or hurt (effect map)").click()
        page.locator("#effect-show").click()
        page.locator("#effect-map .js-plotly-plot").wait_for(timeout=60_000)
        assert "Click a topic" in page.locator("#effect-line").inner_text()
        topic = tiny_effect["topics"][0]["topic"]
        page.locator("#effect-topics [role=gridcell]", has_text=topic).first.click()
        page.wait_for_function(f"() => document.querySelector('#effect-topic textarea, #effect-topic input')?.value"
                               f" === {topic!r}", timeout=30_000)
        worst = max(tiny_effect["rows"], key=lambda row: row["change"])
        page.locator("#effect-rows").get_by_text(worst["text"][:20]).first.wait_for(timeout=30_000)
        assert worst["tuned_answer"][:20] in page.locator("#effect-rows").inner_text()
        page.locator("#effect-map").scroll_into_view_if_needed()
        shoot(page, "effect-map.png")
        page.locator("#effect-export").click()
        page.wait_for_function("() => document.querySelector('#effect-line')?.innerText.includes('exported')",
                               timeout=30_000)
