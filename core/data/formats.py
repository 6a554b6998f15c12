"""Turn loaded rows into what trl trains on, and preview exactly what the model sees.

    python -c "from core.data.rows import load_rows; from core.data.formats import sft_rows; from training.model_setup import load_tokenizer; print(sft_rows(load_rows('identity').select([0]), load_tokenizer('smollm2'))[0])"

SFT rows of any format become prompt/completion pairs: conversational (lists of messages)
when the tokenizer has a chat template, plain strings otherwise. DAPT text is tokenized,
concatenated and cut into sliding windows of `block_size` tokens every `stride` tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from core.data.rows import DataError, detect_format

ROLES = ("system", "user", "assistant")


def conversation(row: dict, fmt: str, number: int) -> list[dict]:
    """One SFT row as a validated message list ending in the assistant's answer; `number`
    (1-based) names the row in errors."""
    if fmt in ("messages", "sharegpt"):
        messages = row.get("messages") if fmt == "messages" else sharegpt_messages(row.get("conversations"), number)
        return _checked_messages(messages, number)
    question, answer = _question_answer(row, fmt, number)
    return [{"role": "user", "content": question}, {"role": "assistant", "content": str(answer)}]


def to_prompt_completion(messages: list[dict], chat: bool) -> dict:
    """{"prompt", "completion"}: message lists with a chat template, plain text without."""
    prompt, answer = messages[:-1], messages[-1]["content"]
    if chat:
        return {"prompt": prompt, "completion": [{"role": "assistant", "content": answer}]}
    return {"prompt": qa_prompt(prompt), "completion": f" {answer}"}


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bard": "assistant", "bing": "assistant", "system": "system"}


def sharegpt_messages(turns, number: int) -> list[dict]:
    """ShareGPT's [{"from": "human" | "gpt" | "system", "value": ...}] as role/content messages."""
    if not isinstance(turns, list) or not turns:
        raise DataError(f"row {number}: 'conversations' must be a non-empty list of {{from, value}}.")
    messages = []
    for i, turn in enumerate(turns, 1):
        role = SHAREGPT_ROLES.get(str((turn or {}).get("from", "")).lower()) if isinstance(turn, dict) else None
        if role is None:
            raise DataError(f"row {number}, turn {i}: 'from' must be one of {', '.join(SHAREGPT_ROLES)}.")
        messages.append({"role": role, "content": turn.get("value")})
    return messages


def qa_prompt(messages: list[dict]) -> str:
    """The plain "Question:/Answer:" text that SFT and DPO train a model without a chat template
    on, and that Chat prompts such an adapter with (core.inference.chat.QA_FORMAT). Earlier turns stay as
    question/answer pairs; consecutive user messages form one question."""
    parts, question = [], []
    for message in messages:
        if message["role"] == "user":
            question.append(message["content"])
        elif message["role"] == "assistant":
            parts.append("Question: " + "\n\n".join(question) + f"\nAnswer: {message['content']}")
            question = []
    return "\n\n".join(parts + ["Question: " + "\n\n".join(question) + "\nAnswer:"])


def cell_text(row: dict, column: str, number: int, required: bool = True) -> str:
    """One cell as text. A null (JSON null, an empty or missing CSV field) is a clear error when
    required, never the string 'None' trained on or a template error deep inside trl."""
    value = row.get(column)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if required:
            raise DataError(f"row {number}: '{column}' is empty (null or a missing field); fill it in or drop the row.")
        return ""
    if isinstance(value, (list, dict)):
        raise DataError(f"row {number}: '{column}' must be text, not a {type(value).__name__}.")
    text = str(value)
    if required and not text.strip():
        raise DataError(f"row {number}: '{column}' is empty.")
    return text


def prompt_messages(row: dict, number: int) -> list[dict]:
    """A preference or rated row's prompt as messages: already a list, or one user turn."""
    prompt = row["prompt"]
    return prompt if isinstance(prompt, list) else [{"role": "user", "content": cell_text(row, "prompt", number)}]


def answer_text(row: dict, column: str, number: int) -> str:
    """An answer cell's text: the last message of a list, or the text itself; never empty."""
    value = row[column]
    text = value[-1]["content"] if isinstance(value, list) and value else cell_text(row, column, number)
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"row {number}: '{column}' is empty.")
    return text


def answer_columns(prompt: list[dict], answers: dict, chat: bool) -> dict:
    """trl's columns for a prompt and its answers: message lists when the tokenizer has a chat
    template, plain "Question:/Answer:" text otherwise (as SFT rows become)."""
    if chat:
        return {"prompt": prompt, **{key: [{"role": "assistant", "content": text}] for key, text in answers.items()}}
    return {"prompt": qa_prompt(prompt), **{key: f" {text}" for key, text in answers.items()}}


def _question_answer(row: dict, fmt: str, number: int) -> tuple[str, str]:
    if fmt == "prompt_completion":
        return cell_text(row, "prompt", number), cell_text(row, "completion", number)
    if fmt == "alpaca":
        extra = cell_text(row, "input", number, required=False).strip()
        return (cell_text(row, "instruction", number) + (f"\n\n{extra}" if extra else ""),
                cell_text(row, "output", number))
    question, answer = cell_text(row, "question", number), cell_text(row, "answer", number)
    context = cell_text(row, "context", number, required=False).strip()
    return (f"{context}\n\nQuestion: {question}" if context else question), answer


def _checked_messages(messages, number: int) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"row {number}: 'messages' must be a non-empty list of {{role, content}}.")
    for i, message in enumerate(messages, 1):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise DataError(f"row {number}, message {i}: missing or unknown role (use {', '.join(ROLES)}).")
        if not isinstance(message.get("content"), str):
            raise DataError(f"row {number}, message {i}: 'content' must be text.")
    if messages[-1]["role"] != "assistant" or len(messages) < 2:
        raise DataError(f"row {number}: the last message must be the assistant's answer, after a prompt.")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def sft_format(column_names) -> str:
    """The format of SFT rows with these columns; a DataError naming the objective that trains
    them where they are not prompts with answers."""
    fmt = detect_format(column_names)
    if fmt == "preference":
        raise DataError("This is preference data (prompt, chosen, rejected): train it with objective=dpo.")
    if fmt == "unpaired":
        raise DataError("These are rated answers (prompt, completion, label): train them with objective=kto.")
    if fmt == "text":
        raise DataError("SFT needs prompts and answers, but this data has only a 'text' column: "
                        "use objective=dapt, or map columns (e.g. 'question=Q,answer=A').")
    return fmt


def check_text_column(column_names) -> None:
    """DAPT reads plain text: a DataError where the rows are something else."""
    if detect_format(column_names) != "text":
        raise DataError(f"DAPT needs a 'text' column; have {', '.join(column_names)}.")


def sft_rows(ds, tokenizer, first_row: int = 1):
    """A Dataset of prompt/completion rows, validated row by row (numbered from `first_row`)."""
    from datasets import Dataset

    fmt = sft_format(ds.column_names)
    conversations = [conversation(row, fmt, i) for i, row in enumerate(ds, first_row)]
    rows = [to_prompt_completion(messages, bool(tokenizer.chat_template)) for messages in conversations]
    if any(sum(m["role"] == "assistant" for m in messages) > 1 for messages in conversations):
        # trl puts the loss on every assistant turn only through {% generation %} markers, which
        # most chat templates (SmolLM2's too) lack; so multi-turn sets are tokenized here. The
        # prompt/completion columns stay for the held-out answers and the report.
        for row, messages in zip(rows, conversations):
            row["input_ids"], row["assistant_masks"] = conversation_tokens(messages, tokenizer)
    return Dataset.from_list(rows)


def conversation_tokens(messages: list[dict], tokenizer) -> tuple[list[int], list[int]]:
    """(input_ids, assistant_masks) of a whole conversation, 1 on every assistant turn. A turn
    starts where the rendering of the turns before it (with the generation prompt) stops
    matching the full text, as trl cuts a prompt from its completion."""
    full = _rendered_ids(messages, tokenizer, final=True)
    mask = [0] * len(full)
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            start = _common_prefix(_rendered_ids(messages[:i], tokenizer), full)
            end = len(full) if i == len(messages) - 1 else _common_prefix(_rendered_ids(messages[: i + 1], tokenizer), full)
            mask[start:end] = [1] * (end - start)
    return full, mask


def _rendered_ids(messages: list[dict], tokenizer, final: bool = False) -> list[int]:
    """Token ids of `messages` as the model sees them; ending on a user turn adds the
    generation prompt. Plain text (no template) ends the conversation with eos, as trl does."""
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=messages[-1]["role"] == "user",
                                             tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    if messages[-1]["role"] != "assistant":
        return tokenizer(qa_prompt(messages))["input_ids"]
    text = qa_prompt(messages[:-1]) + f" {messages[-1]['content']}" + (tokenizer.eos_token if final else "")
    return tokenizer(text)["input_ids"]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def dapt_windows(ds, tokenizer, block_size: int, stride: int, context_length: int,
                 max_windows: int | None = None):
    """Sliding windows over the concatenated corpus, as a Dataset of `input_ids`.

    With `max_windows`, tokenizing stops as soon as that many windows exist (the preview)."""
    from datasets import Dataset

    check_text_column(ds.column_names)
    if block_size > context_length:
        raise DataError(f"block_size={block_size} is larger than the model context ({context_length} tokens).")
    needed = block_size + stride * (max_windows - 1) if max_windows else None
    stream: list[int] = []
    for number, row in enumerate(ds, 1):
        text = cell_text(row, "text", number)
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if needed and len(stream) >= needed:
            break
    starts = range(0, max(len(stream) - block_size, 0) + 1, stride)
    windows = [stream[s : s + block_size] for s in starts if len(stream[s : s + block_size]) == block_size]
    if not windows:
        raise DataError(f"The text has {len(stream)} tokens, fewer than one block of {block_size}.")
    return Dataset.from_dict({"input_ids": windows[:max_windows] if max_windows else windows})


@dataclass
class Preview:
    """One example as the model sees it: (text, "trained" | None) segments and counts."""

    segments: list[tuple[str, str | None]]
    total_tokens: int
    trained_tokens: int
    note: str = ""


def sft_preview(example: dict, tokenizer) -> Preview:
    """Mirror trl's tokenization: the completion starts where prompt and full text diverge.
    A multi-turn example shows each assistant turn it trains on."""
    if example.get("input_ids") is not None:
        return _masked_preview(example["input_ids"], example["assistant_masks"], tokenizer)
    if isinstance(example["prompt"], list):
        prompt_ids = _ids(tokenizer.apply_chat_template(example["prompt"], add_generation_prompt=True))
        full_ids = _ids(tokenizer.apply_chat_template(example["prompt"] + example["completion"]))
    else:
        prompt_ids = tokenizer(example["prompt"])["input_ids"]
        full_ids = tokenizer(example["prompt"] + example["completion"] + tokenizer.eos_token)["input_ids"]
    cut = _common_prefix(prompt_ids, full_ids)
    segments = [(tokenizer.decode(full_ids[:cut]), None), (tokenizer.decode(full_ids[cut:]), "trained")]
    return Preview(segments, len(full_ids), len(full_ids) - cut)


def _masked_preview(ids: list[int], mask: list[int], tokenizer) -> Preview:
    segments, start = [], 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or mask[end] != mask[start]:
            segments.append((tokenizer.decode(ids[start:end]), "trained" if mask[start] else None))
            start = end
    turns = sum(1 for _, label in segments if label)
    return Preview(segments, len(ids), sum(mask), f"All {turns} assistant turns are trained on." if turns > 1 else "")


def _ids(encoded):
    return encoded["input_ids"] if hasattr(encoded, "keys") else list(encoded)


def dapt_preview(windows, tokenizer, block_size: int, stride: int, total_chars: int) -> Preview:
    """The first window; the tokens it shares with the next window are marked as overlap.

    Only the shown windows are built, so the total is estimated from the corpus's characters."""
    ids = windows[0]["input_ids"]
    overlap = block_size - stride
    head, tail = ids[: block_size - overlap], ids[block_size - overlap :]
    segments = [(tokenizer.decode(head), "trained")]
    if tail:
        segments.append((tokenizer.decode(tail), "trained, overlaps next window"))
    chars_per_token = max(len(tokenizer.decode(ids)) / len(ids), 1e-6)
    estimate = max(1, round((total_chars / chars_per_token - block_size) / stride) + 1)
    note = f"About {estimate:,} windows of {block_size} tokens, a new one every {stride} tokens."
    return Preview(segments, len(ids), len(ids), note)
