"""Compare mode on the real SmolLM2: both panes stream from one batch, and each pane's greedy
tokens equal its solo run (the int8 weights and the adapters' rows path: tests/test_lora_rows.py)."""
from __future__ import annotations

from core.inference.adapters import attach_tuned
from core.inference.chat import GenerationSettings, stream_reply
from core.inference.compare import stream_compare

GREEDY = GenerationSettings(max_new_tokens=32)
PROMPTS = ["What is the capital of France?", "Give me three tips for sleeping better.",
           "Explain what a neural network is in one sentence."]


def ask(text):
    return [{"role": "user", "content": text}]


def solo(model, messages, adapter=None):
    *_, last = stream_reply(model, messages, GREEDY, adapter)
    return last


def test_compare_panes_equal_their_solo_runs(smol, loud_adapter):
    tuned = attach_tuned(smol, str(loud_adapter))
    differs = 0
    for prompt in PROMPTS:
        steps = [(b.text, t.text, b.done or t.done)  # the replies grow in place: copy each step
                 for b, t in stream_compare(smol, tuned, ask(prompt), ask(prompt), GREEDY)]
        *_, (base, tuned_reply) = stream_compare(smol, tuned, ask(prompt), ask(prompt), GREEDY)
        assert base.text == solo(smol, ask(prompt)).text
        assert tuned_reply.text == solo(smol, ask(prompt), tuned.adapter_name).text
        assert base.done and tuned_reply.done and "tok/s" in tuned_reply.stats
        differs += base.text != tuned_reply.text
        growing = [b for b, t, done in steps if b and t and not done]
        assert len(growing) >= 3, "both panes must grow together, not one after the other"
    assert differs == len(PROMPTS), "the tuned pane must really run the adapter"


def test_a_tuned_reply_prepares_its_adapter_on_the_decode_thread(smol, loud_adapter, monkeypatch):
    """Preparing the adapter's rows (scaling, quantizing) is torch work; on a request thread it
    gave that thread an OpenMP team, and every later step of the decode thread ran half as fast
    on a 2-core Xeon (a tuned pane 15.8 tok/s, then the base 22.7, against 38 and 42 now)."""
    import threading

    from core.inference import lora_rows

    threads_seen, prepare = [], lora_rows.forwards_for
    monkeypatch.setattr(lora_rows, "forwards_for",
                        lambda *args: threads_seen.append(threading.current_thread().name) or prepare(*args))
    tuned = attach_tuned(smol, str(loud_adapter))
    assert solo(smol, ask(PROMPTS[0]), tuned.adapter_name).done
    *_, (base, tuned_reply) = stream_compare(smol, tuned, ask(PROMPTS[0]), ask(PROMPTS[0]), GREEDY)
    assert len(threads_seen) == 2 and all(name.startswith("decode") for name in threads_seen), threads_seen


def test_compare_with_different_histories_per_pane(smol, loud_adapter):
    """Each pane continues its own conversation: rows of different lengths, left-padded."""
    tuned = attach_tuned(smol, str(loud_adapter))
    first_base, first_tuned = solo(smol, ask(PROMPTS[0])), solo(smol, ask(PROMPTS[0]), tuned.adapter_name)
    follow = {"role": "user", "content": "And of Italy?"}
    base_turns = ask(PROMPTS[0]) + [{"role": "assistant", "content": first_base.text}, follow]
    tuned_turns = ask(PROMPTS[0]) + [{"role": "assistant", "content": first_tuned.text * 3}, follow]
    *_, (base, tuned_reply) = stream_compare(smol, tuned, base_turns, tuned_turns, GREEDY)
    # Rows of different lengths are left-padded, which changes the bf16/int8 rounding, so a
    # near-tie can flip: one CI run answered "In Italy, the capital of Italy is Rome." where the
    # solo run said "The capital of Italy is Rome.". Equal rows are held to exact equality above.
    assert "Rome" in base.text and "Rome" in solo(smol, base_turns).text
    assert tuned_reply.done and tuned_reply.new_tokens > 0


def test_compare_full_fine_tune_runs_beside_the_base(smol, tiny_model_dir):
    tuned = attach_tuned(smol, str(tiny_model_dir))
    *_, (base, other) = stream_compare(smol, tuned, ask(PROMPTS[0]), ask(PROMPTS[0]), GREEDY)
    assert base.text == solo(smol, ask(PROMPTS[0])).text
    assert other.text == solo(tuned.loaded, ask(PROMPTS[0])).text and other.done


def test_compare_stop_ends_generation(smol, loud_adapter):
    tuned = attach_tuned(smol, str(loud_adapter))
    stream = stream_compare(smol, tuned, ask(PROMPTS[1]), ask(PROMPTS[1]),
                            GenerationSettings(max_new_tokens=400))
    next(stream), next(stream)
    stream.close()  # what Gradio does on Stop
    assert smol.lock.acquire(timeout=10), "generate must end soon after Stop and free the model"
    smol.lock.release()


def test_report_pairs_take_each_side_from_its_own_model(smol, loud_adapter, tiny_model_dir):
    """A run's report asks its pairs with answer_pairs: "before" may be a model of its own (the
    start of a DPO run continuing a QLoRA adapter, run on its 4-bit base), "after" an adapter on
    the base; each side's answers are its solo runs' (one conversation: rows of other lengths
    would be left-padded, which changes the rounding)."""
    from core.inference.compare import answer_pairs

    start, tuned = attach_tuned(smol, str(tiny_model_dir)), attach_tuned(smol, str(loud_adapter))
    conversations = [ask(PROMPTS[0])]
    [pairs] = answer_pairs(smol, tuned, conversations, GREEDY, start)
    assert pairs == [(solo(start.loaded, messages).text.strip(), solo(smol, messages, tuned.adapter_name).text.strip())
                     for messages in conversations]
