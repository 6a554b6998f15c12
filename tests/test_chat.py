"""Chat core on the real SmolLM2: answers, streaming, truncation, compare correctness, bad input."""
from __future__ import annotations

import pytest
import torch

from core.inference.adapters import attach_tuned

from core.inference.chat import GenerationSettings, build_inputs, stream_reply
from core.inference.models import ModelError, load_model

GREEDY = GenerationSettings(max_new_tokens=24)
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def final(model, messages, settings=GREEDY, adapter=None):
    *_, last = stream_reply(model, messages, settings, adapter)
    return last


def test_real_model_knows_paris_and_streams(smol):
    chunks = [r.text for r in stream_reply(smol, FRANCE, GREEDY)]
    assert "Paris" in chunks[-1]
    assert len(chunks) >= 3 and chunks[0] != chunks[-1]


def test_reply_reports_tokens_per_second(smol):
    reply = final(smol, FRANCE)
    assert reply.done and reply.new_tokens > 0 and "tok/s" in reply.stats


def test_long_history_drops_oldest_turns_with_notice(tiny_model_dir):
    model = load_model(str(tiny_model_dir))
    history = []
    for i in range(30):
        history += [{"role": "user", "content": f"question {i} " * 20},
                    {"role": "assistant", "content": f"answer {i} " * 20}]
    history.append({"role": "user", "content": "last question"})
    settings = GenerationSettings(max_new_tokens=16)
    ids, notice = build_inputs(model, history, settings)
    assert ids.shape[1] <= model.context_length - 16
    assert "Dropped" in notice
    assert "last question" in model.tokenizer.decode(ids[0])


def test_huge_message_is_cut_with_notice(smol):
    message = "word " * 4000 + "What is the capital of France?"  # 20,000+ characters
    assert len(message) > 20_000
    reply = final(smol, [{"role": "user", "content": message}], GenerationSettings(max_new_tokens=8))
    assert reply.done and "cut to its last" in reply.notice


def test_an_answer_longer_than_the_context_is_refused_in_one_line(smol):
    """`cli.py chat --max-new-tokens 100000` failed inside the embedding on an empty prompt."""
    too_long = GenerationSettings(max_new_tokens=smol.context_length)
    with pytest.raises(ModelError, match=rf"^max_new_tokens={smol.context_length} leaves no room for the message: "
                                         rf"this model reads {smol.context_length} tokens in all"):
        final(smol, FRANCE, too_long)


def test_empty_message_is_refused(smol):
    with pytest.raises(ModelError, match="Empty message"):
        final(smol, [{"role": "user", "content": "   "}])


@pytest.mark.slow
def test_compare_base_pane_is_exactly_the_base_model(tmp_path, data_home, monkeypatch):
    """One copy of weights: the base side must equal a separately loaded plain transformers
    model, token for token. The reference owes nothing to the code under test, so the app
    decodes with the model's own weights here (FINETUNE_LAB_DECODE=eager, in a cache of this
    test's own); the int8 path is held to peft's logits in test_lora_rows.py."""
    from collections import OrderedDict

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from core.inference import models
    from core.inference.models import resolve_model

    monkeypatch.setenv("FINETUNE_LAB_DECODE", "eager")
    monkeypatch.setattr(models, "_CACHE", OrderedDict())
    source = resolve_model("smollm2-135m-instruct")
    compare = load_model("smollm2-135m-instruct")
    assert compare.decode == "eager"
    plain = AutoModelForCausalLM.from_pretrained(source, dtype=compare.model.dtype).eval()
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(source),
                          LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.mul_(50)  # make the adapter's effect unmistakable
    lora.save_pretrained(tmp_path / "adapter")

    tuned = attach_tuned(compare, str(tmp_path / "adapter"))
    settings = GenerationSettings(max_new_tokens=20, repetition_penalty=1.1)
    base_reply = final(compare, FRANCE, settings, None)
    tuned_reply = final(compare, FRANCE, settings, tuned.adapter_name)
    ids, _ = build_inputs(compare, FRANCE, settings)
    expected = plain.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=20,
                              do_sample=False, repetition_penalty=1.1,
                              pad_token_id=compare.tokenizer.pad_token_id)
    expected_text = compare.tokenizer.decode(expected[0, ids.shape[1]:], skip_special_tokens=True)
    assert base_reply.text == expected_text
    assert tuned_reply.text != base_reply.text
    assert final(compare, FRANCE, settings, None).text == expected_text  # still base after tuned ran


def test_adapter_for_another_base_is_refused(tiny_run, tiny_model_dir):
    other = load_model(str(tiny_model_dir))
    with pytest.raises(ModelError, match="does not fit|trained on"):
        attach_tuned(other, str(tiny_run / "adapter"))


def test_full_model_folder_loads_as_second_model(smol, tiny_model_dir):
    tuned = attach_tuned(smol, str(tiny_model_dir))
    assert tuned.adapter_name is None and tuned.loaded is not smol


@pytest.mark.parametrize("path, message", [("", "needs an adapter"), ("/no/such/dir", "neither a finished run, a folder nor a Hub repo id")])
def test_bad_adapter_paths(smol, path, message):
    with pytest.raises(ModelError, match=message):
        attach_tuned(smol, path)


def test_folder_that_is_neither_adapter_nor_model(smol, tmp_path):
    with pytest.raises(ModelError, match="neither"):
        attach_tuned(smol, str(tmp_path))


@pytest.mark.slow
def test_packaged_gemma_base_continues_text():
    """The second packaged model: a pretrained-only Gemma 3 with no chat template. Its text
    streams through its own decoder (spaces as "▁"), each text the start of the last one."""
    gemma = load_model("gemma-3-270m")
    assert not gemma.tokenizer.chat_template
    texts = [reply.text for reply in stream_reply(gemma, [{"role": "user", "content": "The Eiffel Tower is located in the city of"}],
                                                  GenerationSettings(max_new_tokens=8, raw_text=True))]
    assert "Paris" in texts[-1] and len(texts) > 2
    assert all(texts[-1].startswith(text) and "\ufffd" not in text for text in texts)


def test_two_sessions_attaching_one_adapter_load_it_once(smol, tiny_run):
    import threading

    names = []
    threads = [threading.Thread(target=lambda: names.append(attach_tuned(smol, tiny_run.name).adapter_name))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(names)) == 1 and list(smol.adapters.values()).count(names[0]) == 1


def test_generation_runs_on_the_one_decode_thread(tiny_model_dir):
    """core.threads: chat generates on one long-lived thread, never on the request's thread,
    and a load runs in a short-lived thread of its own (its OpenMP team ends with it)."""
    import threading

    from core import threads

    model = load_model(str(tiny_model_dir))
    seen = set()
    hook = model.model.register_forward_pre_hook(lambda *_: seen.add(threading.current_thread().name))
    try:
        for _ in range(2):
            final(model, FRANCE, GenerationSettings(max_new_tokens=3))
    finally:
        hook.remove()
    assert len(seen) == 1 and seen.pop().startswith("decode")
    with pytest.raises(ZeroDivisionError):
        threads.in_own_thread(lambda: 1 / 0)
    assert threads.in_own_thread(threading.current_thread) is not threading.current_thread()


def test_retry_undo_and_edit_rewind_both_panes():
    """Chatbot's retry, undo and edit events cut both panes before the chosen user message and
    put its text (or the edited text) back in the box."""
    import gradio as gr

    from tabs.chat import on_edit, on_retry, on_undo

    def exchange(question, answer):
        return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]

    base = exchange("Who are you?", "SmolLM.") + exchange("And?", "A model.")
    tuned = exchange("Who are you?", "Lumen.") + exchange("And?", "From the lab.")
    assert on_retry(base, tuned, gr.RetryData(None, {"index": 2, "value": "And?"})) == (base[:2], tuned[:2], "And?")
    assert on_undo(base, tuned, gr.UndoData(None, {"index": 0, "value": "Who are you?"})) == ([], [], "Who are you?")
    edited = gr.EditData(None, {"index": 2, "value": "Where from?", "previous_value": "And?"})
    assert on_edit(base, tuned, edited) == (base[:2], tuned[:2], "Where from?")
    single = on_retry(base, [], gr.RetryData(None, {"index": 2, "value": "And?"}))
    assert single == (base[:2], [], "And?"), "Single mode has an empty tuned pane"
    assert on_retry(base, tuned, gr.RetryData(None, {"index": 1, "value": "SmolLM."}))[2] == "", "not a question"


def test_cli_chat_holds_a_conversation(smol, tiny_run, monkeypatch, capsys):
    """`cli.py chat` without a prompt reads a conversation from stdin: each answer is prompted
    with what was said before (the prompt grows by the last turn), and /reset starts over. A seed
    torch cannot take is one line."""
    import io
    import re

    from cli import main as cli

    monkeypatch.setattr("sys.stdin", io.StringIO("Who are you?\nAnd again?\n/reset\nWho are you?\n"))
    assert cli(["chat", "--adapter", tiny_run.name, "--max-new-tokens", "12"]) == 0
    out, err = capsys.readouterr()
    prompts = [int(n) for n in re.findall(r"; prompt (\d+) tokens\]", err)]
    assert len(prompts) == 3 and "Lumen" in out.splitlines()[0], (out, err)
    assert prompts[1] > prompts[0] + 10 and prompts[2] == prompts[0] and "(a new conversation)" in err
    assert cli(["chat", "--temperature", "1", "--seed", str(2**64), "Hi"]) == 2
    assert "The seed must be a whole number that fits in 64 bits" in capsys.readouterr().err
    # A chat run's name, or an unfinished run's, as the embedder: one line (as a Hub id it failed after 76 s offline)
    from core.runs import RunFolder

    RunFolder.named("unfinished-run").path.mkdir()
    for run, said in ((tiny_run.name, f"Run '{tiny_run.name}' tuned a chat model, not an embedder: pick "
                                      "all-MiniLM-L6-v2, a tuned embedder's run, a Hub id or a folder."),
                      ("unfinished-run", "Run 'unfinished-run' has not finished: it has no embedder to use yet.")):
        assert cli(["embed", "--embedder", run, "--max-docs", "20"]) == 2
        assert capsys.readouterr().err.splitlines()[-1] == f"error: {said}"
    RunFolder.named("unfinished-run").path.rmdir()

