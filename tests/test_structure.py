"""The seams that every feature crosses: one owner of the run folder, one user-facing error,
one thread policy, handlers wired by name."""
from __future__ import annotations

import subprocess

import pytest

from core.errors import LabError
from tests.conftest import ROOT

RUN_FILES = ("manifest.json", "log.jsonl", "eval.json", "held_out.jsonl", "prompt_format.json", "job.json", "status.json", "config.yaml",
             "report.md", "report.json", "stderr.log", "stop-requested", ".adapter.partial", '/ "adapter"',
             '"checkpoints"')


@pytest.mark.parametrize("name", RUN_FILES)
def test_only_run_folder_names_the_run_files(name):
    found = subprocess.run(["git", "grep", "-lF", name, "--", "*.py", ":!tests", ":!bench"], cwd=ROOT,
                           capture_output=True, text=True).stdout.split()
    assert found == ["core/runs.py"], f"{name} is spelled in {found}"


def test_a_lab_error_is_one_line_and_a_bug_surfaces(monkeypatch):
    from tabs import chat

    def refuse(name):
        raise LabError("That model is not here.")

    monkeypatch.setattr(chat, "load_model", refuse)
    *_, (_, _, status, _) = chat.respond(chat.ChatRequest("Hi", [], []))
    assert status == "⚠️ That model is not here."

    def crash(name):
        raise RuntimeError("a real bug")

    monkeypatch.setattr(chat, "load_model", crash)
    with pytest.raises(RuntimeError, match="a real bug"):
        list(chat.respond(chat.ChatRequest("Hi", [], [])))


def test_one_decorator_turns_a_lab_error_into_the_handlers_outputs():
    import gradio as gr

    from tabs.feedback import shows_errors

    @shows_errors(lambda message: (None, message))
    def plain(fail: str, request: gr.Request = None):
        if fail == "lab":
            raise LabError("No such run.")
        if fail == "bug":
            raise KeyError("a real bug")
        return "table", "fine"

    @shows_errors()
    def streaming(n: int):
        yield "one"
        raise LabError(f"stopped after {n}")

    assert plain("no") == ("table", "fine") and plain("lab") == (None, "⚠️ No such run.")
    with pytest.raises(KeyError):
        plain("bug")
    assert list(streaming(1)) == ["one", "⚠️ stopped after 1"]
    assert list(inspect_signature(plain)) == ["fail", "request"], "Gradio still sees the handler's own signature"
    with pytest.raises(gr.Error, match="No such run"):
        shows_errors(toast=True)(lambda: plain.__wrapped__("lab"))()


def inspect_signature(function):
    import inspect

    return inspect.signature(function).parameters


def test_thread_policy_leaves_chat_a_core(monkeypatch):
    from core import threads

    monkeypatch.setattr(threads, "cores", lambda: 2)
    assert threads.for_job() == 1 and threads.for_chat(job_running=True) == 1
    monkeypatch.delenv("FINETUNE_LAB_THREADS", raising=False)
    assert threads.for_chat(job_running=False) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.for_training(0) == 1 and threads.for_training(3) == 3


def test_classifier_refuses_another_embedder():
    from core.explore.corpora import load_corpus
    from core.explore.embeddings import classify, embed
    from tabs import topics

    corpus = load_corpus("chatterbot", max_docs=200)
    result = classify(embed(corpus.texts), corpus.labels, corpus.texts)
    result.embedder = "all-MiniLM-L6-v2"
    assert topics.classify_text(result, "What is a computer?", "all-MiniLM-L6-v2").startswith("→ **")
    assert "trained on all-MiniLM-L6-v2" in topics.classify_text(result, "What is a computer?", "other/model")


def imported_roots(folder: str) -> dict[str, set[str]]:
    """Top-level package of every import (module level or inside functions) per module."""
    import ast

    found = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        if "templates" in path.parts:
            continue
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT / folder))] = names
    return found


def test_the_arrows_run_one_way():
    """tabs, serve -> training -> core: core imports neither training, the UI nor gradio;
    training no gradio; the endpoint (serve/) no tab. (core/hub/templates/ holds the Space app
    that is uploaded, not imported.)"""
    for module, names in imported_roots("core").items():
        assert not names & {"training", "tabs", "serve", "gradio"}, f"core/{module} imports {names}"
    for module, names in imported_roots("training").items():
        assert not names & {"tabs", "serve", "gradio"}, f"training/{module} imports {names & {'tabs', 'gradio'}}"
    for module, names in imported_roots("serve").items():
        assert not names & {"tabs", "gradio"}, f"serve/{module} imports {names & {'tabs', 'gradio'}}"


def import_graph() -> dict[str, set[str]]:
    """Each module of the app (core, training, tabs, serve, app.py and the cli modules) and the app modules it
    imports, at module level or inside functions."""
    import ast

    files = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for folder in ("core", "training", "tabs", "serve") for p in (ROOT / folder).rglob("*.py")
             if "templates" not in p.parts}
    files.update({path.stem: path for path in (ROOT / "app.py", *ROOT.glob("cli*.py"))})
    graph = {}
    for name, path in files.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                edges |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = (edges & files.keys()) - {name}
    return graph


def test_no_import_cycles():
    """No module reaches itself through imports, not even through an import inside a function:
    a cycle held together that way breaks as soon as someone moves the import up."""
    graph, done, cycles = import_graph(), set(), []

    def walk(module, path):
        if module in path:
            cycles.append(path[path.index(module):] + [module])
            return
        if module in done:
            return
        for imported in sorted(graph[module]):
            walk(imported, path + [module])
        done.add(module)

    for module in sorted(graph):
        walk(module, [])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])


def name_tests(source: str, names) -> list[int]:
    """Lines where code compares a value with one of `names`, or looks it up in a collection."""
    import ast

    return [part.lineno for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Compare)
            for part in ast.walk(node) if isinstance(part, ast.Constant) and part.value in names]


def test_only_the_objectives_name_an_objective():
    """No code outside training/objectives/ tests an objective's name: a new objective is one
    file there, and the form, CLI, live view, manifest and card follow. (An endpoint that shares
    a name, like the Embeddings tab's `embed`, is no test of the objective.)"""
    from training.objectives import NAMES

    found = []
    for path in [ROOT / "app.py", *ROOT.glob("cli*.py"), *(p for folder in ("core", "training", "tabs", "serve", "bench")
                                                     for p in (ROOT / folder).rglob("*.py"))]:
        if "objectives" not in path.parts and "templates" not in path.parts:
            found += [f"{path.relative_to(ROOT)}:{line}" for line in name_tests(path.read_text(), NAMES)]
    assert not found, found
    assert set(NAMES) == {"sft", "dapt", "dpo", "kto", "embed"}
    assert name_tests('if run.manifest().get("objective") == "dpo":\n    pass\n', NAMES) == [1]
    assert name_tests('ok = cfg.objective in ("sft", "dpo")\n', NAMES) == [1, 1]


def test_the_environment_is_read_in_one_place():
    """Only core/settings.py reads a FINETUNE_LAB_ variable or a Space's, and no app module
    writes os.environ to pass a setting."""
    reads = subprocess.run(["git", "grep", "-nE", r"environ(\.get)?[\[(]\"(FINETUNE_LAB_|SPACE_|SYSTEM|OAUTH_)|getenv",
                            "--", "*.py", ":!tests", ":!bench", ":!core/settings.py", ":!core/hub/templates"],
                           cwd=ROOT, capture_output=True, text=True).stdout
    assert not reads, reads
    writes = subprocess.run(["git", "grep", "-nE", r"environ\[[^]]+\] *=[^=]", "--", "*.py", ":!tests", ":!bench"],
                            cwd=ROOT, capture_output=True, text=True).stdout
    assert not writes, writes


def test_settings_are_typed_and_keep_secrets_out_of_their_repr(monkeypatch):
    from core.settings import settings

    monkeypatch.setenv("FINETUNE_LAB_ADMIN_KEY", "k-secret-4821")
    monkeypatch.setenv("FINETUNE_LAB_MAX_MODELS", "3")
    assert settings().max_models == 3 and settings().admin_key == "k-secret-4821"
    assert "k-secret-4821" not in repr(settings())
    monkeypatch.setenv("FINETUNE_LAB_MAX_MODELS", "lots")
    with pytest.raises(LabError, match="FINETUNE_LAB_MAX_MODELS='lots' is not a whole number"):
        settings()
