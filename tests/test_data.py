"""Data loading, format detection, column mapping, conversion, preview, and bad inputs. (Hub
dataset ids and the run names they give: tests/test_hub_source.py; the checks before a run
starts: tests/test_run_checks.py.)"""
from __future__ import annotations

import json

import pytest

from core.data.rows import DataError, detect_format, load_rows
from core.data.formats import dapt_windows, sft_preview, sft_rows
from training.config import TrainConfig, config_from_dict, load_config
from training.model_setup import load_tokenizer
from training.prepare import build_examples, preview, split_examples

ROWS = {
    "text": {"text": "Some raw domain text."},
    "messages": {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
    "prompt_completion": {"prompt": "2+2?", "completion": "4"},
    "alpaca": {"instruction": "Add", "input": "2 and 2", "output": "4"},
    "qa": {"question": "Capital of France?", "answer": "Paris", "context": "Europe"},
    "sharegpt": {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
}
TWO_TURNS = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."},
             {"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "A lab model."}]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("smollm2-135m-instruct")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("fmt", list(ROWS))
def test_each_format_is_detected_from_a_file(tmp_path, fmt):
    ds = load_rows(write_jsonl(tmp_path / "d.jsonl", [ROWS[fmt]] * 3))
    assert detect_format(ds.column_names) == fmt


SFT_EXPECTED = {  # format -> (the prompt's user message, the answer trained on)
    "messages": ("Hi", "Hello!"), "sharegpt": ("Hi", "Hello!"), "prompt_completion": ("2+2?", "4"),
    "alpaca": ("Add\n\n2 and 2", "4"), "qa": ("Europe\n\nQuestion: Capital of France?", "Paris"),
}


@pytest.mark.parametrize("fmt", list(SFT_EXPECTED))
def test_each_sft_format_becomes_prompt_completion(tmp_path, fmt, tokenizer):
    ds = load_rows(write_jsonl(tmp_path / "d.jsonl", [ROWS[fmt]]))
    row = sft_rows(ds, tokenizer)[0]
    question, answer = SFT_EXPECTED[fmt]
    assert row["prompt"] == [{"role": "user", "content": question}]
    assert row["completion"] == [{"role": "assistant", "content": answer}]


def test_column_mapping_overrides_detection(tmp_path, tokenizer):
    ds = load_rows(write_jsonl(tmp_path / "d.jsonl", [{"Q": "Why?", "A": "Because."}]), "question=Q,answer=A")
    assert detect_format(ds.column_names) == "qa"
    assert sft_rows(ds, tokenizer)[0]["completion"][0]["content"] == "Because."


def test_bundled_datasets_load():
    assert len(load_rows("identity")) >= 60
    chatter = load_rows("chatterbot")
    assert len(chatter) > 2000 and detect_format(chatter.column_names) == "qa"
    assert set(load_rows("chatterbot:ai")["category"]) == {"ai"}
    plays = load_rows("shakespeare")
    assert len(plays) == 38 and "ROMEO" in " ".join(plays["text"])


def test_csv_tsv_and_txt_files(tmp_path):
    (tmp_path / "d.csv").write_text("question,answer\nWhy?,Because.\nHow?,Like so.\n")
    assert detect_format(load_rows(str(tmp_path / "d.csv")).column_names) == "qa"
    (tmp_path / "d.md").write_text("# Title\n\nFirst paragraph.\n\nSecond paragraph.\n")
    assert len(load_rows(str(tmp_path / "d.md"))) == 3
    (tmp_path / "d.tsv").write_text("question\tanswer\nWhy, then?\tBecause, that's why.\n")  # commas stay text
    assert load_rows(str(tmp_path / "d.tsv"))[0] == {"question": "Why, then?", "answer": "Because, that's why."}


def test_preview_marks_exactly_the_tokens_trl_trains_on(tokenizer):
    """The preview mirrors trl's own tokenization: compare with SFTTrainer's prepared labels."""
    from trl import SFTConfig, SFTTrainer
    from transformers import AutoModelForCausalLM

    from core.inference.models import resolve_model

    cfg = TrainConfig(dataset="identity", max_rows=4, eval_fraction=0)
    examples = build_examples(cfg, tokenizer)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(cfg.model))
    trainer = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=examples,
                         args=SFTConfig(output_dir="/tmp/unused", packing=False, report_to="none",
                                        use_cpu=True, max_length=256))
    labels = trainer.train_dataset[0]["labels"]
    trained_ids = [t for t in labels if t != -100]
    shown = sft_preview(examples[0], tokenizer)
    assert shown.trained_tokens == len(trained_ids)
    assert shown.segments[1][1] == "trained"
    assert shown.segments[1][0] == tokenizer.decode(trained_ids)
    assert "<|im_start|>assistant" in shown.segments[0][0]


def test_dapt_windows_slide_with_overlap(tokenizer):
    ds = load_rows("shakespeare").select(range(1))
    windows = dapt_windows(ds, tokenizer, block_size=64, stride=48, context_length=8192)
    first, second = windows[0]["input_ids"], windows[1]["input_ids"]
    assert len(first) == len(second) == 64
    assert first[48:] == second[:16]  # the 16-token overlap
    shown = preview(TrainConfig(dataset="shakespeare", objective="dapt", block_size=64, stride=48, max_rows=1),
                    tokenizer=tokenizer)
    assert shown.total_tokens == 64 and "overlaps" in shown.segments[-1][1]


# ---- bad inputs: each a clear error naming file/row/problem ----

@pytest.mark.parametrize("name, content, message", [
    ("empty.jsonl", b"", "empty"),
    ("broken.jsonl", b'{"question": "a", "answer": "b"}\n{"question": oops}\n', "row 2: broken JSON"),
    ("broken.json", b'[{"question": "a",', "broken JSON"),
    ("latin1.csv", "question,answer\ncaf\xe9,ok\n".encode("latin-1"), "line 2: not UTF-8"),
    ("binary.txt", b"\x00\x01\x02\x03" * 100, "binary"),
    ("data.xlsx", b"whatever", "unsupported file type"),
    ("only_header.csv", b"question,answer\n", r"only_header.csv: has a header \(question, answer\) and no rows\."),
    ("only_header.tsv", b"question\tanswer\n", r"only_header.tsv: has a header \(question, answer\) and no rows\."),
    ("mixed.jsonl", b'{"question": "a", "answer": "b"}\n{"question": "c", "answer": {"text": "d"}}\n',
     r"mixed.jsonl: field 'answer' is text in row 1 but an object in row 2; make it the same kind in every row\."),
])
def test_bad_files(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_rows(str(tmp_path / name))


def test_wrong_columns(tmp_path, tokenizer):
    ds = load_rows(write_jsonl(tmp_path / "d.jsonl", [{"foo": "a", "bar": "b"}]))
    with pytest.raises(DataError, match="Cannot detect the format from columns foo, bar"):
        sft_rows(ds, tokenizer)
    with pytest.raises(DataError, match="mapped column 'nope' not found"):
        load_rows(str(tmp_path / "d.jsonl"), "question=nope")


def test_chat_rows_with_missing_roles(tmp_path, tokenizer):
    rows = [ROWS["messages"], {"messages": [{"content": "hi"}, {"role": "assistant", "content": "x"}]}]
    ds = load_rows(write_jsonl(tmp_path / "d.jsonl", rows))
    with pytest.raises(DataError, match="row 2, message 1: missing or unknown role"):
        sft_rows(ds, tokenizer)


def test_zero_rows_after_filtering(tmp_path):
    (tmp_path / "blank.txt").write_text("\n\n   \n\n")
    with pytest.raises(DataError, match="no rows|empty"):
        load_rows(str(tmp_path / "blank.txt"))


def test_block_size_larger_than_context(tokenizer):
    with pytest.raises(DataError, match="larger than the model context"):
        dapt_windows(load_rows("shakespeare").select(range(1)), tokenizer, 10_000, 5_000, 8192)


def test_dataset_smaller_than_eval_split(tmp_path, tokenizer):
    cfg = TrainConfig(dataset=write_jsonl(tmp_path / "d.jsonl", [ROWS["qa"]]), eval_fraction=0.2)
    with pytest.raises(DataError, match="too few for eval_fraction"):
        split_examples(build_examples(cfg, tokenizer), cfg)


def test_yaml_round_trip_of_every_recipe(tmp_path):
    from training.config import list_recipes

    assert {"tiny", "sft_lora", "sft_qlora", "dapt_lora", "qa_full"} <= set(list_recipes())
    for name in list_recipes():
        cfg = load_config(name)
        (tmp_path / "c.yaml").write_text(cfg.to_yaml())
        assert load_config(tmp_path / "c.yaml") == cfg


def test_training_attention_kernel_choice(monkeypatch):
    """Plain matmul attention on a CPU for rows up to 512 tokens (measured faster there); sdpa
    for longer rows, whose attention weights would not fit, and on a GPU."""
    import torch

    from training.device import attention_for

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    from training.objectives import get

    def kernel(**settings):
        cfg = config_from_dict(settings)
        return attention_for(get(cfg.objective).sequence_length(cfg))

    assert kernel(max_length=256) == "eager"
    assert kernel(max_length=2048) == "sdpa"
    assert kernel(objective="dapt", block_size=1024, stride=512, max_length=256) == "sdpa"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert kernel(max_length=256) == "sdpa"


def trained_text(ids, mask, tokenizer) -> list[str]:
    """The trained spans of a masked example, one string per run of 1s."""
    spans, current = [], []
    for token, bit in zip(ids + [None], mask + [0]):
        if bit:
            current.append(token)
        elif current:
            spans, current = spans + [tokenizer.decode(current)], []
    return spans


def test_multi_turn_chats_train_every_assistant_turn(tmp_path, tokenizer):
    sharegpt = [{"from": "human" if m["role"] == "user" else "gpt", "value": m["content"]} for m in TWO_TURNS]
    ds = load_rows(write_jsonl(tmp_path / "d.jsonl", [{"conversations": sharegpt}, ROWS["sharegpt"]]))
    rows = sft_rows(ds, tokenizer)
    assert rows.column_names == ["prompt", "completion", "input_ids", "assistant_masks"]
    spans = trained_text(rows[0]["input_ids"], rows[0]["assistant_masks"], tokenizer)
    assert spans == ["Hello there.<|im_end|>\n", "A lab model.<|im_end|>\n"]
    assert rows[0]["prompt"] == TWO_TURNS[:3] and rows[0]["completion"][0]["content"] == "A lab model."
    shown = sft_preview(rows[0], tokenizer)
    assert [text for text, label in shown.segments if label] == spans and "All 2 assistant turns" in shown.note
    assert shown.trained_tokens == sum(rows[0]["assistant_masks"])


def test_single_turn_labels_match_trl(tokenizer, tiny_model_dir, tmp_path):
    """A single-turn row of a multi-turn set, tokenized here, gets exactly the labels that trl's
    own prompt/completion path builds for it."""
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    single = sft_rows(load_rows_from([ROWS["messages"], {"messages": TWO_TURNS}]), tokenizer).select([0])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)

    def prepared(columns):
        args = SFTConfig(output_dir=str(tmp_path), report_to=[], max_length=128, use_cpu=True, bf16=False)
        trainer = SFTTrainer(model=model, args=args, train_dataset=single.select_columns(columns),
                             processing_class=tokenizer)
        return trainer.train_dataset[0]

    ours, theirs = prepared(["input_ids", "assistant_masks"]), prepared(["prompt", "completion"])
    assert ours["input_ids"] == theirs["input_ids"] and ours["labels"] == theirs["labels"]
    assert sum(label != -100 for label in ours["labels"]) == sum(single[0]["assistant_masks"]) > 0


def load_rows_from(rows):
    from datasets import Dataset

    return Dataset.from_list(rows)


def test_plain_format_multi_turn_keeps_question_answer_pairs():
    from core.data.formats import conversation_tokens, qa_prompt

    assert qa_prompt(TWO_TURNS[:1]) == "Question: Hi\nAnswer:"
    assert qa_prompt(TWO_TURNS[:3]) == "Question: Hi\nAnswer: Hello there.\n\nQuestion: Who are you?\nAnswer:"
    plain = load_tokenizer("smollm2-135m-instruct", "plain")
    ids, mask = conversation_tokens(TWO_TURNS, plain)
    assert plain.decode(ids).endswith("Answer: A lab model." + plain.eos_token)
    assert trained_text(ids, mask, plain) == [" Hello there.", " A lab model." + plain.eos_token]


@pytest.mark.parametrize("turns, problem", [
    ([{"from": "robot", "value": "x"}], "'from' must be one of"),
    ("hello", "non-empty list"),
    ([{"from": "human", "value": "Hi"}], "last message must be the assistant"),
])
def test_bad_sharegpt_rows_name_the_problem(tmp_path, tokenizer, turns, problem):
    ds = load_rows_from([{"conversations": turns}])
    with pytest.raises(DataError, match=problem):
        sft_rows(ds, tokenizer)
