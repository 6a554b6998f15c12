"""Write an Ollama Modelfile next to an exported GGUF: FROM, the chat TEMPLATE in Go-template
syntax, the default SYSTEM prompt, stop tokens and the app's default sampling parameters.

    ollama create my-model -f <data dir>/runs/RUN/gguf-q8_0/Modelfile

Ollama renders TEMPLATE with Go's text/template over `.Messages` (each with `.Role` and
`.Content`) and puts the Modelfile's SYSTEM first when a request brings no system message.
The template is picked by rendering the model's own Jinja chat template and recognising it:
- ChatML (SmolLM2, Qwen and many more) is written out, with the default system prompt that
  SmolLM2's template injects moved into SYSTEM;
- a model without a chat template gets the plain continuation the app's chat uses (the
  messages joined by blank lines);
- any other template is left out, and Ollama uses the chat template stored in the GGUF.
tests/test_gguf.py renders the written template with Go's own text/template and compares it
with the tokenizer's chat template.
"""
from __future__ import annotations

import re
from pathlib import Path

from core.inference.chat import GenerationSettings

CHATML = ('{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n'
          '{{ end }}<|im_start|>assistant\n')
# core.inference.chat.plain_prompt in Go: the turns joined by blank lines, system prompts left out.
PLAIN = ('{{- $sep := "" }}{{- range .Messages }}{{- if ne .Role "system" }}'
         '{{ $sep }}{{ .Content }}{{ $sep = "\\n\\n" }}{{- end }}{{- end }}')
_PROBE = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
          {"role": "user", "content": "Who are you?"}]


def chatml_text(messages: list[dict]) -> str:
    """What CHATML renders for `messages`, written in Python to check a tokenizer against it."""
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def chat_family(tokenizer) -> tuple[str, str]:
    """("chatml" | "plain" | "other", the default system prompt the template injects or "")."""
    if not tokenizer.chat_template:
        return "plain", ""
    text = tokenizer.apply_chat_template(_PROBE, add_generation_prompt=True, tokenize=False)
    system = re.match(r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n", text, re.S)
    default_system = system.group(1) if system else ""
    with_system = ([{"role": "system", "content": default_system}] if default_system else []) + _PROBE
    return ("chatml" if text == chatml_text(with_system) else "other"), default_system


def modelfile_text(gguf_name: str, tokenizer) -> str:
    """The Modelfile for `gguf_name` (a file in the same folder) and this tokenizer."""
    family, system = chat_family(tokenizer)
    settings = GenerationSettings()
    lines = [f"FROM ./{gguf_name}", ""]
    if family == "chatml":
        lines += [f'TEMPLATE """{CHATML}"""']
        if system:
            lines += [f'SYSTEM """{system}"""']
        stops = ["<|im_end|>", "<|im_start|>"]
    elif family == "plain":
        lines += [f'TEMPLATE """{PLAIN}"""']
        stops = [tokenizer.eos_token] if tokenizer.eos_token else []
    else:
        lines += ["# No TEMPLATE: Ollama uses the chat template stored in the GGUF file."]
        stops = [tokenizer.eos_token] if tokenizer.eos_token else []
    lines += [""] + [f'PARAMETER stop "{stop}"' for stop in stops]
    lines += [f"PARAMETER temperature {settings.temperature}", f"PARAMETER top_p {settings.top_p}",
              f"PARAMETER repeat_penalty {settings.repetition_penalty}",
              f"PARAMETER num_ctx {settings.max_input_tokens + settings.max_new_tokens}"]
    return "\n".join(lines) + "\n"


def write_modelfile(folder: Path, gguf_name: str, tokenizer) -> Path:
    path = folder / "Modelfile"
    path.write_text(modelfile_text(gguf_name, tokenizer), encoding="utf-8")
    return path
