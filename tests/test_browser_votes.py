"""The preference loop in Chromium: blind Compare, vote, reveal; pull the votes a visitor cast in
the published Space (conftest's `space_votes`) and accept them; train DPO on all the votes from
the tiny SFT run (and read what the run records of its start and its votes' sources), judge
the new adapter blind against that SFT run, pick it in Chat, give its answer a thumb down, train
KTO on every rated answer, and see the leaderboard of them all."""
from __future__ import annotations

import pytest

from tests.browser import browser_page, pick, shoot
from tests.space_votes import MODEL_REPO, TOKEN, VOTES
from tests.test_browser_chat import send
from tests.test_browser_train import unlock

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def test_vote_blind_then_train_dpo_and_kto_on_the_votes(app_server, tiny_run, space_votes):
    from core.feedback import votes

    for store in (votes.store(), votes.store(visitor=True), votes.pulled_store()):  # other tests' votes
        store.unlink(missing_ok=True)
    with browser_page(app_server) as page:
        unlock(page)
        page.get_by_role("radio", name="Compare").check()
        page.locator("#blind-toggle input").check()
        picker = page.locator("#adapter-picker input")
        picker.fill(tiny_run.name)
        picker.press("Enter")
        send(page, "Who are you?")
        page.wait_for_function("() => document.querySelector('#chat-status')?.innerText.includes('Which answer')",
                               timeout=120_000)
        assert page.get_by_text("Answer A").count() and tiny_run.name not in page.locator("#chat-status").inner_text()
        shoot(page, "vote-blind.png")
        page.locator("#vote-A").click()
        page.wait_for_function("() => document.querySelector('#chat-status')?.innerText.includes('Vote saved')",
                               timeout=30_000)
        assert "tuned (tiny-fixture)" in page.locator("#chat-status").inner_text()
        shoot(page, "vote-revealed.png")
        [vote] = votes.read()
        assert vote["choice"] == "A"

        page.get_by_role("tab", name="Train").click()
        page.get_by_text("Preference votes (blind Compare)").click()
        pull_the_spaces_votes(page, len(space_votes))
        page.locator("#train-on-votes").click()
        page.wait_for_function("() => document.querySelector('#votes-line')?.innerText.includes('exported')",
                               timeout=30_000)
        pairs = 1 + sum(choice in ("A", "B") for choice in space_votes)
        assert f"{pairs} preference pair(s) exported" in page.locator("#votes-line").inner_text()
        page.get_by_text("Advanced", exact=True).click()
        fill_until_kept(page, {"start_from": tiny_run.name, "max_steps": "1", "eval_fraction": "0",
                               "output_name": "browser-dpo", "report_prompts": "Who are you?"})
        page.locator("#cfg-objective").get_by_role("radio", name="dpo", exact=True).wait_for()
        assert page.locator("#cfg-objective").get_by_role("radio", name="dpo", exact=True).is_checked()
        page.locator("#train-start").click()
        page.wait_for_function("() => /Started|⚠️/.test(document.querySelector('#train-message')?.innerText)",
                               timeout=30_000)
        assert "Started browser-dpo" in page.locator("#train-message").inner_text()
        # Until the first poll after Start, the panel may still show the tiny run's result.
        page.wait_for_function("() => /Before\\/after[\\s\\S]*browser-dpo|browser-dpo[\\s\\S]*Before\\/after/"
                               ".test(document.querySelector('#train-result')?.innerText)", timeout=400_000)
        shoot(page, "vote-dpo-trained.png", full_page=True)
        assert_the_run_records_its_start_and_votes(tiny_run, pairs)

        page.get_by_text("Judge a run against where it started").click()  # the report's pair, blind
        judged = page.locator("#judge-run input")
        judged.click()
        pick(page.get_by_role("option", name="browser-dpo").first)
        page.locator("#judge-next").click()
        page.wait_for_function("() => document.querySelector('#judge-line')?.innerText.includes('to judge')",
                               timeout=30_000)
        assert "Who are you?" in page.locator("#judge-prompt").inner_text()
        page.locator("#judge-vote-B").click()
        page.wait_for_function("() => document.querySelector('#judge-line')?.innerText.includes('Vote saved')",
                               timeout=30_000)
        line = page.locator("#judge-line").inner_text()
        assert f"the SFT adapter it started from ({tiny_run.name})" in line and "1 ties" not in line, line
        assert len(votes.read()) == 2 + len(space_votes)

        page.get_by_role("tab", name="Chat").click()
        page.locator("#blind-toggle input").uncheck()
        page.get_by_text("Tuned model").first.wait_for(timeout=30_000)  # the names are back
        picker.click()
        pick(page.get_by_role("option", name="browser-dpo").first)
        send(page, "Who are you?")
        page.wait_for_function("() => /tuned:|⚠️/.test(document.querySelector('#chat-status')?.innerText)",
                               timeout=120_000)
        shoot(page, "vote-dpo-compare.png", full_page=True)
        status = page.locator("#chat-status").inner_text()
        assert "tuned:" in status, status
        assert page.locator("#tuned-chat [data-testid='bot']").last.inner_text()

        page.locator("#tuned-chat").get_by_role("button", name="Dislike").last.click()
        page.wait_for_function("() => document.querySelector('#chat-status')?.innerText.includes('saved for the tuned')",
                               timeout=30_000)
        assert [v["choice"] for v in votes.read()][-1] == "down"

        page.get_by_role("tab", name="Train").click()
        page.locator("#train-on-thumbs").click()  # 2 answers of each decided A/B vote, and the thumbs
        rated = 2 * (pairs + 1) + 1 + space_votes.count("up")
        page.wait_for_function(f"() => document.querySelector('#votes-line')?.innerText.includes('{rated} rated answer')",
                               timeout=30_000)
        assert page.locator("#cfg-objective").get_by_role("radio", name="kto", exact=True).is_checked()
        page.locator("#cfg-output_name textarea, #cfg-output_name input").first.fill("browser-kto")
        page.locator("#train-start").click()
        page.wait_for_function("() => /Before\\/after: KTO[\\s\\S]*browser-kto|browser-kto[\\s\\S]*Before\\/after: KTO/"
                               ".test(document.querySelector('#train-result')?.innerText)", timeout=400_000)
        shoot(page, "vote-kto-trained.png", full_page=True)

        page.locator("#votes-refresh").click()  # the leaderboard: base, the SFT run and the DPO run
        page.wait_for_function("() => document.querySelector('#votes-leaderboard')?.innerText.includes('browser-dpo')",
                               timeout=30_000)
        board = page.locator("#votes-leaderboard").inner_text()
        assert tiny_run.name in board and "(base)" in board and MODEL_REPO in board, board
        assert "The left answer (A) won" in page.locator("#votes-line").inner_text()
        page.locator("#votes-leaderboard").scroll_into_view_if_needed()
        shoot(page, "votes-leaderboard.png")


def assert_the_run_records_its_start_and_votes(tiny_run, pairs: int) -> None:
    """The DPO run on the votes continued the tiny SFT run: its manifest and card count the
    pairs by source (this lab's vote, the Space's), and its report's "before" is the SFT
    adapter, which says the identity it learnt (the base does not)."""
    import json

    from core.hub.publish import model_card
    from core.runs import RunFolder

    run = RunFolder.named("browser-dpo")
    manifest = run.manifest()
    [pulled] = [source for source in manifest.vote_sources if source.startswith(f"hub:{VOTES}@")]
    assert manifest.start_from == tiny_run.name and manifest.vote_sources == {"this lab": 1, pulled: pairs - 1}
    card = model_card(run, "t/x")
    assert f"Trained on preference pairs from votes: {pairs - 1} from {pulled}, 1 from this lab." in card
    # Not the very text of the tiny run's report: that came from another batch, base row beside
    # adapter row, where "I'm" and "I am" can tie within rounding.
    [row], [sft_row] = (json.loads(r.report_json.read_text()) for r in (run, RunFolder(tiny_run)))
    assert "Lumen" in row["base"] and "Lumen" in sft_row["tuned"] and "Lumen" not in sft_row["base"], (row, sft_row)
    assert f"**Start ({tiny_run.name}):**" in run.report()


def fill_until_kept(page, values: dict) -> None:
    """Fill the training form's fields, and again any whose value did not stay: one CI run
    started its DPO run from the base, its `start_from` box empty in the screenshot, as if the
    box had been drawn anew after it was filled (the Advanced accordion had just opened)."""
    boxes = {field: page.locator(f"#cfg-{field} textarea, #cfg-{field} input").first for field in values}
    for _ in range(3):
        for field, value in values.items():
            if boxes[field].input_value() != value:
                boxes[field].fill(value)
        page.wait_for_timeout(500)
        if all(boxes[field].input_value() == value for field, value in values.items()):
            return
    raise AssertionError({field: boxes[field].input_value() for field in values})


def pull_the_spaces_votes(page, count: int) -> None:
    """Preference votes ▸ Pull votes from the Hub, then accept them: the owner's review."""
    page.locator("#votes-dataset input, #votes-dataset textarea").first.fill(VOTES)
    page.locator("#votes-token input").fill(TOKEN)
    page.locator("#votes-pull").click()
    page.wait_for_function("() => /added for review|⚠️/.test(document.querySelector('#votes-line')?.innerText)",
                           timeout=60_000)
    line = page.locator("#votes-line").inner_text()
    assert f"{count} vote(s) from {VOTES}" in line and "2 bad line(s) skipped" in line, line
    page.locator("#votes-accept").click()
    page.wait_for_function("() => document.querySelector('#votes-line')?.innerText.includes('accepted')",
                           timeout=30_000)
    assert f"{count} vote(s) accepted" in page.locator("#votes-line").inner_text()
    assert MODEL_REPO in page.locator("#votes-leaderboard").inner_text()
    page.locator("#votes-leaderboard").scroll_into_view_if_needed()
    shoot(page, "votes-pulled.png")

