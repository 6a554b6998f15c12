"""objective=embed: the packaged MiniLM fine-tuned on labelled texts with sentence-transformers'
trainer, run like every run (out of process, killed and resumed), measured before and after on
held-out rows, and then used wherever an embedder is."""
from __future__ import annotations

import json

import pytest

from core.errors import LabError
from training.progress import read_log


def test_labelled_rows_are_checked_deduplicated_and_previewed(data_home, tmp_path):
    from training.config import load_config
    from training.prepare import build_examples, preview

    cfg = load_config("embed_chatterbot")
    examples = build_examples(cfg, None)
    assert examples.column_names == ["sentence", "label"] and len(set(examples["label"])) == 21
    assert len(examples) == len(set(examples["sentence"])) == 749, "a repeated question is kept once"
    shown = preview(cfg, 0)
    assert shown.segments == [("What is AI?", "label: ai")] and shown.total_tokens > 3
    with pytest.raises(LabError, match="set adapter=full or lora"):
        load_config("embed_chatterbot", adapter="qlora")
    with pytest.raises(LabError, match="even batch_size of at least 4"):
        load_config("embed_chatterbot", batch_size=5)
    bare = tmp_path / "bare.jsonl"
    bare.write_text(json.dumps({"body": "x", "tag": "a"}) + "\n")
    with pytest.raises(LabError, match="needs a text column .* this data has body, tag"):
        build_examples(load_config("embed_chatterbot", dataset=str(bare)), None)
    assert len(build_examples(load_config("embed_chatterbot", dataset=str(bare), columns="text=body,label=tag"),
                              None)) == 1


@pytest.mark.slow
def test_tuning_separates_the_held_out_categories(embed_run):
    manifest = embed_run.manifest()
    assert manifest.kind == "embedder" and manifest.method == "EMBED + FULL" and manifest.steps == 60
    figures = {m.label.split(",")[-1].split("(")[0].strip(): m for m in manifest.held_out}
    accuracy, nmi = figures["held-out classification accuracy"], figures["NMI"]
    silhouette = figures["held-out silhouette of the labels"]
    # Measured on the recipe, uninterrupted: accuracy 0.773 -> 0.827, NMI 0.61 -> 0.758,
    # silhouette 0.008 -> 0.277 (30 steps: the same accuracy, NMI 0.74, silhouette 0.138).
    assert accuracy.after > accuracy.before + 0.02, manifest.held_out
    assert nmi.after > nmi.before + 0.08, manifest.held_out
    assert silhouette.after > silhouette.before + 0.15, manifest.held_out
    steps = [e["step"] for e in read_log(embed_run) if e.get("loss") is not None]
    assert steps == list(range(1, 61)), "resumed from checkpoint-20, each step once"
    maps = json.loads(embed_run.report_json.read_text())
    assert len(maps["base"]) == len(maps["tuned"]) == len(maps["labels"]) > 50 and maps["base"] != maps["tuned"]


@pytest.mark.slow
def test_the_tuned_embedder_is_used_like_the_packaged_one(embed_run):
    import numpy as np

    from core.explore.embedders import tuned_embedders
    from core.explore.embeddings import embed
    from tabs.chat import adapter_choices

    assert embed_run.name in tuned_embedders() and embed_run.name not in adapter_choices()
    texts = ["What is AI?", "Who wrote Hamlet?", "Do you like food?"]
    tuned, base = embed(texts, embed_run.name), embed(texts)
    assert tuned.shape == base.shape and not np.allclose(tuned, base, atol=1e-3)
    assert np.allclose(embed(texts, embed_run.name), tuned), "the cache keys vectors by the run"
    from core.inference.adapters import adapter_folder
    from core.inference.models import ModelError

    with pytest.raises(ModelError, match=f"^'{embed_run.name}' tuned an embedder: it does not chat"):
        adapter_folder(embed_run.name)  # typed into Chat's adapter box, or cli.py chat --adapter


@pytest.mark.slow
def test_held_out_answers_can_be_scored_by_the_tuned_embedder(embed_run):
    from core.explore.embedders import cosine_label
    from training.answer_eval import scores
    from training.config import load_config

    answers, references = ["I am Lumen, an assistant.", "Paris."], ["My name is Lumen.", "The capital is Paris."]
    by_minilm, by_tuned = scores(answers, references), scores(answers, references, embed_run.name)
    assert by_tuned["cosine"] != by_minilm["cosine"] and by_tuned["rouge_l"] == by_minilm["rouge_l"]
    assert cosine_label(embed_run.name) == f"cosine by {embed_run.name}" and cosine_label(None) == "MiniLM cosine"
    assert load_config("tiny", eval_embedder=embed_run.name).eval_embedder == embed_run.name


@pytest.mark.slow
def test_the_served_tab_clusters_with_it_and_a_visitor_may_too(embed_run, raw):
    """Over the served API as a visitor: the tuned embedder's map differs from the base's;
    starting the recipe is refused (test_public.py covers every guarded action)."""
    from tests.test_public import refused, text_of

    spec = ["chatterbot", None, "", "", 300]
    cluster = raw.fn_index(api_name="cluster")
    maps = {}
    for embedder in ("all-MiniLM-L6-v2", embed_run.name):
        result = raw.call(cluster, [*spec, embedder, "kmeans", 21, 15, "pca", "label"])
        assert result["ok"], result["error"]
        plot, info, _ = result["data"]
        assert "NMI" in info, info
        maps[embedder] = (plot, float(info.split("NMI ")[1].split(" ")[0]))
    assert maps[embed_run.name][0] != maps["all-MiniLM-L6-v2"][0]
    assert maps[embed_run.name][1] > maps["all-MiniLM-L6-v2"][1], "the tuned embedder clusters the categories better"
    from core.explore.embedders import tuned_embedders

    refit = raw.call(raw.fn_index(api_name="topics_tuned"), [*spec, "all-MiniLM-L6-v2", "fast", 8])
    assert refit["ok"] and refit["data"][0].startswith("8 topics over 300 documents"), refit
    assert refit["data"][-1] == tuned_embedders()[0], "one click: the newest tuned embedder, and the picker says so"
    started = raw.call(raw.fn_index(api_name="train_recipe"), ["embed_chatterbot", "output_name: visitor-embed"])
    assert refused(started), text_of(started)[:200]


def test_retrieval_scores_rank_each_anchors_own_positive():
    import numpy as np

    from core.explore.embeddings import retrieval_scores

    eye = np.eye(3, dtype=np.float32)
    assert retrieval_scores(eye, eye) == {"top1": 1.0, "mrr": 1.0}
    shifted = eye[[1, 2, 0]]  # each anchor's own positive is now the least similar
    assert retrieval_scores(eye, shifted) == {"top1": 0.0, "mrr": round((1 / 2 + 1 / 2 + 1 / 2) / 3, 3)}


@pytest.mark.slow
def test_pairs_train_with_multiple_negatives_ranking(data_home):
    """ChatterBot's questions and answers as anchor/positive pairs: the other loss, and the
    retrieval figures in the manifest (no maps: pairs have no labels to colour by)."""
    from core.runs import RunFolder
    from training.config import load_config
    from training.prepare import preview
    from training.fit import train

    cfg = load_config("embed_chatterbot", output_name="embed-pairs", columns="anchor=question,positive=answer",
                      max_rows=160, max_steps=3, batch_size=16, eval_fraction=0.2)
    assert [label for _, label in preview(cfg, 0).segments] == ["anchor: the text", "positive: made nearer"]
    run = RunFolder(train(cfg, data_home / "runs" / cfg.output_name))
    manifest = run.manifest()
    assert [m.label for m in manifest.held_out] == ["held-out anchors whose nearest positive is their own",
                                                    "held-out mean reciprocal rank"]
    assert all(0 < m.before <= 1 and 0 < m.after <= 1 for m in manifest.held_out), manifest.held_out
    assert manifest.steps == 3 and manifest.report is None and manifest.kind == "embedder"


@pytest.mark.slow
def test_lora_trains_resumes_exactly_and_saves_a_whole_embedder(data_home):
    """adapter=lora: checkpoints hold the LoRA weights alone, a run cut back to its first
    checkpoint and resumed ends exactly where the uninterrupted run did, and adapter/ is the
    merged embedder, used like any other."""
    import shutil

    import numpy as np

    from core.explore.embeddings import embed
    from core.runs import RunFolder
    from training.config import load_config
    from training.fit import train

    cfg = load_config("embed_chatterbot", output_name="embed-lora", adapter="lora", learning_rate=5e-4)
    whole = RunFolder(train(cfg, data_home / "runs" / cfg.output_name))
    manifest = whole.manifest()
    figures = {m.label.split(",")[-1].split("(")[0].strip(): m for m in manifest.held_out}
    # Measured over seven runs (bf16 and fp32, one or two threads): accuracy 0.773 -> 0.80-0.827,
    # the labels' silhouette 0.008 -> 0.045-0.048, NMI 0.61 -> 0.646-0.725, ARI 0.229 ->
    # 0.254-0.372 (full fine-tune: NMI 0.758). KMeans on ~75 held-out texts in 21 clusters lands
    # in another optimum for embeddings that differ in rounding only (the same accuracy and
    # silhouette, ARI 0.254 against 0.328), so the margin is on the silhouette, which has none.
    assert manifest.method == "EMBED + LORA"
    assert figures["held-out classification accuracy"].after > figures["held-out classification accuracy"].before
    silhouette = figures["held-out silhouette of the labels"]
    assert silhouette.after > silhouette.before + 0.02, manifest.held_out
    assert figures["NMI"].after > figures["NMI"].before, manifest.held_out
    first = whole.checkpoints / "checkpoint-30"
    assert (first / "adapter_model.safetensors").is_file() and not (first / "model.safetensors").exists()
    assert (whole.adapter / "model.safetensors").is_file() and not (whole.adapter / "adapter_config.json").exists()

    cut = RunFolder(data_home / "runs" / "embed-lora-cut")
    shutil.copytree(whole.path, cut.path)
    shutil.rmtree(cut.adapter), shutil.rmtree(cut.checkpoints / "checkpoint-60")
    cut.manifest_file.unlink(), cut.status_file.unlink()
    train(load_config(cut.config), cut.path, resume=True)
    assert [e["step"] for e in read_log(cut) if e.get("loss") is not None] == list(range(1, 61))
    assert cut.manifest().held_out == manifest.held_out
    texts = ["What is AI?", "Who wrote Hamlet?", "Do you like food?"]
    assert np.allclose(embed(texts, cut.name), embed(texts, whole.name), atol=1e-6)
    assert not np.allclose(embed(texts, whole.name), embed(texts), atol=1e-3)


@pytest.mark.slow
def test_the_effect_map_groups_rows_with_the_tuned_embedder(embed_run):
    from core.data.rows import load_rows
    from training.effect import group

    questions = [row["question"] for row in load_rows("chatterbot")][:30]
    by_tuned = [{"group": "held-out", "text": text, "change": 0.0} for text in questions]
    by_minilm = [dict(row) for row in by_tuned]
    assert group(by_tuned, embed_run.name)[1].startswith("Topics: BERTopic")
    group(by_minilm, "")
    assert all(row["topic"] for row in by_tuned)
    assert [row["topic"] for row in by_tuned] != [row["topic"] for row in by_minilm], "the embedder groups them"
