"""Does the exported model behave like the one you tested? The adapter on its base, the merged
model and the exported GGUF answer the same prompts greedily; their answers are compared token
by token, and the chat template each format renders is diffed. Writes parity.json beside the GGUF.

    python cli.py export --run RUN --format gguf --quant q8_0 --check
    from training.export_parity import check_parity; print(check_parity("RUN", "q8_0")["verdict"])

Prompts: the run's held-out prompts (at most 16) and its report prompts. The GGUF is read by a
runtime this project did not write (training.gguf_runtime: llama.cpp where llama-cpp-python is
installed, else transformers' GGUF loader), and parity.json names it. Per pair of formats: the
share of prompts with identical greedy answers, where the first one parts, and the agreement of
next-token choices along the adapter's own answer (teacher-forced). The template: one
conversation rendered by the run's tokenizer, by the GGUF's embedded template, and by the
Modelfile (its Python twin in training.modelfile), compared token for token: the cause of most
"it behaves differently in Ollama" reports.
"""
from __future__ import annotations

from core.errors import LabError
from core.paths import write_json
from core.runs import RunFolder
from training.export import training_base
from training.gguf_runtime import TorchRunner, gguf_runner

MAX_PROMPTS = 16
NEW_TOKENS = 24
PROBE = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
         {"role": "user", "content": "Who are you?"}]


def parity_prompts(run: RunFolder, cfg) -> list[list[dict]]:
    """The held-out prompts (at most MAX_PROMPTS) and the report's, each once, as messages."""
    from training.objective import as_messages

    held = [as_messages(row["prompt"]) for row in (run.read_held_out() or []) if "prompt" in row]
    report = [[{"role": "user", "content": text}] for text in cfg.report_prompts or []]
    unique = {repr(messages): messages for messages in held[:MAX_PROMPTS] + report}
    if not unique:
        raise LabError(f"'{run.name}' has no held-out or report prompts to check the export with.")
    return list(unique.values())


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    if tokenizer.chat_template:
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"])
    from core.inference.chat import plain_prompt

    return tokenizer(plain_prompt(messages))["input_ids"]


def agreement(runner, ids: list[int], answer: list[int]) -> float:
    """Share of the answer's tokens that `runner` also picks when fed the answer so far."""
    if not answer:
        return 1.0
    return sum(got == want for got, want in zip(runner.choices(ids, answer), answer)) / len(answer)


def first_parting(one: list[int], other: list[int]) -> int | None:
    """The first token index where two answers differ; None when they are identical."""
    if one == other:
        return None
    return next((i for i, (a, b) in enumerate(zip(one, other)) if a != b), min(len(one), len(other)))


def load_formats(run: RunFolder, gguf) -> dict:
    """{format: runner} for the adapter on its base, the merged folder and the GGUF file."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    fp32 = dict(dtype=torch.float32, use_safetensors=True, trust_remote_code=False)
    # A QLoRA adapter on the NF4 base it trained against, as the merge puts it: on the original
    # weights it answered differently (0/6 prompts identical to its own merged model).
    adapter = (PeftModel.from_pretrained(training_base(run), str(run.adapter)) if run.is_lora else
               AutoModelForCausalLM.from_pretrained(str(run.adapter), **fp32)).eval()
    formats = {"adapter": TorchRunner(adapter)}
    if (run.merged / "config.json").is_file():
        formats["merged"] = TorchRunner(AutoModelForCausalLM.from_pretrained(str(run.merged), **fp32).eval())
    formats["gguf"] = gguf_runner(gguf, formats["adapter"].stop_ids)
    return formats


def template_check(tokenizer, gguf, runner=None) -> dict:
    """The probe conversation as the run's tokenizer, the GGUF's embedded template and the
    Modelfile beside it render it, tokenized; where each parts from the tokenizer's (None: identical).
    With llama.cpp as the runtime, its own tokenizer's ids for the rendering are checked too."""
    from transformers import AutoTokenizer

    if not tokenizer.chat_template:
        return {"tokenizer": "no chat template: plain continuation", "gguf": None, "modelfile": None}
    want = tokenizer.apply_chat_template(PROBE, add_generation_prompt=True, tokenize=False)
    embedded = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    found = {"gguf": embedded.apply_chat_template(PROBE, add_generation_prompt=True, tokenize=False)
             if embedded.chat_template else ""}
    found["modelfile"] = modelfile_rendering(gguf.parent / "Modelfile", found["gguf"])
    ids = tokenizer(want, add_special_tokens=False)["input_ids"]
    parts = {name: first_parting(ids, tokenizer(text, add_special_tokens=False)["input_ids"])
             for name, text in found.items()}
    if hasattr(runner, "tokenize"):
        parts["llama.cpp tokenizer"] = first_parting(ids, runner.tokenize(want))
    return parts


def modelfile_rendering(path, gguf_rendering: str) -> str:
    """The probe as Ollama renders it with this Modelfile: its ChatML or plain TEMPLATE (their
    Python twins, which test_gguf.py checks against Go's text/template), or with no TEMPLATE
    the GGUF's own."""
    import re

    from core.inference.chat import plain_prompt
    from training.modelfile import CHATML, PLAIN, chatml_text

    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    template, system = (re.search(rf'{key} """(.*?)"""', text, re.S) for key in ("TEMPLATE", "SYSTEM"))
    if template is None:
        return gguf_rendering
    if template.group(1) == CHATML:
        return chatml_text(([{"role": "system", "content": system.group(1)}] if system else []) + PROBE)
    return plain_prompt(PROBE) if template.group(1) == PLAIN else template.group(1)


def check_parity(run_name: str, quant: str, progress=print) -> dict:
    """Answer the prompts in every format, compare, write parity.json; return it with a verdict."""
    from training.config import load_config
    from training.model_setup import load_tokenizer

    run = RunFolder.existing(run_name)
    gguf = next(iter(sorted(run.gguf_dir(quant).glob("*.gguf"))), None)
    if gguf is None:
        raise LabError(f"'{run_name}' has no {quant} GGUF: export it first (cli.py export --run {run_name} "
                       f"--format gguf --quant {quant}).")
    cfg = load_config(run.config)
    tokenizer = load_tokenizer(cfg.model, cfg.chat_template)
    conversations = parity_prompts(run, cfg)
    prompts = [prompt_ids(tokenizer, messages) for messages in conversations]
    progress(f"parity: {len(prompts)} prompts through the adapter, the merged model and the {quant} GGUF")
    formats = load_formats(run, gguf)
    answers = {name: [runner.greedy(ids, NEW_TOKENS) for ids in prompts] for name, runner in formats.items()}
    pairs = {f"{one} vs {other}": compare(answers[one], answers[other], formats[other], prompts)
             for one, other in (("adapter", "merged"), ("adapter", "gguf"), ("merged", "gguf"))
             if one in formats and other in formats}
    result = {"quant": quant, "runtime": formats["gguf"].name, "prompts": len(prompts),
              "pairs": pairs, "template": template_check(tokenizer, gguf, formats["gguf"]),
              "answers": [{"prompt": conversations[n][-1]["content"],
                           **{name: tokenizer.decode(answers[name][n], skip_special_tokens=True) for name in answers}}
                          for n in range(len(prompts))]}
    result["verdict"] = verdict(result)
    write_json(gguf.parent / "parity.json", result)
    return result


def compare(reference: list[list[int]], answers: list[list[int]], runner, prompts: list[list[int]]) -> dict:
    partings = [first_parting(want, got) for want, got in zip(reference, answers)]
    differ = [at for at in partings if at is not None]
    return {"identical": len(partings) - len(differ), "of": len(partings), "partings": partings,
            "mean_parting": round(sum(differ) / len(differ), 1) if differ else None,
            "forced_agreement": round(sum(agreement(runner, ids, want) for ids, want in zip(prompts, reference))
                                      / len(prompts), 4)}


def verdict(result: dict) -> str:
    """"q8_0 in llama.cpp: 16/16 prompts identical to the adapter; template identical", or
    where the answers and the templates part."""
    gguf = result["pairs"]["adapter vs gguf"]
    runtime = result["runtime"].split(" (")[0]
    line = f"{result['quant']} in {runtime}: {gguf['identical']}/{gguf['of']} prompts identical to the adapter"
    if gguf["mean_parting"] is not None:
        line += f", first difference at token {gguf['mean_parting']} on average"
    broken = {name: at for name, at in result["template"].items() if name != "tokenizer" and at is not None}
    if "tokenizer" in result["template"]:
        return line + "; no chat template (plain continuation)"
    return line + ("; template identical" if not broken else "; template differs: " + ", ".join(
        f"{name} from token {at}" for name, at in broken.items()))


def side_by_side(result: dict) -> str:
    """A markdown table of the prompts where the GGUF's answer parts from the adapter's: where,
    and both answers (the rest are identical)."""
    partings = result["pairs"]["adapter vs gguf"]["partings"]
    rows = [(answer, at) for answer, at in zip(result["answers"], partings) if at is not None]
    if not rows:
        return ""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")[:160]

    lines = ["| prompt | parts at token | adapter | GGUF |", "|---|---|---|---|"]
    lines += [f"| {cell(a['prompt'])} | {at} | {cell(a['adapter'])} | {cell(a['gguf'])} |" for a, at in rows]
    return "\n".join(lines)
