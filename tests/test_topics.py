"""Embeddings, clustering, classification and BERTopic on real data with the packaged MiniLM."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from core.explore import embeddings
from core.explore.corpora import load_corpus
from core.explore.topics import FIGURES, TopicsError, figure, fit_topics, label_topics, search_topics
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def chatterbot():
    corpus = load_corpus("chatterbot")
    return corpus, embeddings.embed(corpus.texts)


@pytest.fixture(scope="module")
def headlines():
    corpus = load_corpus("guardian-headlines", max_docs=1500)
    vectors = embeddings.embed(corpus.texts)
    return fit_topics(corpus.texts, vectors, "fast", 15, embedder=embeddings.load_embedder())


def test_packaged_minilm_embeds_meaningfully():
    vectors = embeddings.embed(["A cat sat on the mat.", "A kitten rested on the rug.", "Stock markets fell."])
    assert vectors.shape == (3, 384)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2


def test_second_embedding_call_hits_the_cache():
    texts = [f"cache test sentence number {i}" for i in range(40)]
    before = embeddings.ENCODED["texts"]
    first = embeddings.embed(texts)
    assert embeddings.ENCODED["texts"] == before + 40
    second = embeddings.embed(texts)
    assert embeddings.ENCODED["texts"] == before + 40, "the second call must not encode again"
    np.testing.assert_array_equal(first, second)
    second += 1  # a caller's array is its own: the remembered copy is untouched
    embeddings.RECENT.clear()  # as in a fresh process: the file on disk answers
    np.testing.assert_array_equal(first, embeddings.embed(texts))
    assert embeddings.ENCODED["texts"] == before + 40


def test_visitor_embeddings_stay_in_memory_only(data_home):
    """A public app's visitor: the corpus is encoded once for all of Embed, Cluster, Classify
    and Topics, and nothing is written; the memory holds at most RECENT_BYTES."""
    texts = [f"visitor sentence number {i}" for i in range(30)]
    before, files = embeddings.ENCODED["texts"], set(data_home.rglob("*"))
    first = embeddings.embed(texts, write_cache=False)
    np.testing.assert_array_equal(first, embeddings.embed(texts, write_cache=False))
    assert embeddings.ENCODED["texts"] == before + 30 and set(data_home.rglob("*")) == files
    limit, embeddings.RECENT_BYTES = embeddings.RECENT_BYTES, first.nbytes + 1
    try:
        embeddings.embed(texts[:10], write_cache=False)  # evicts the older, larger corpus
        assert sum(v.nbytes for v in embeddings.RECENT.values()) <= embeddings.RECENT_BYTES
        embeddings.embed(texts, write_cache=False)
        assert embeddings.ENCODED["texts"] == before + 30 + 10 + 30, "evicted, so encoded again"
    finally:
        embeddings.RECENT_BYTES = limit


def test_kmeans_recovers_chatterbot_categories(chatterbot):
    corpus, vectors = chatterbot
    ids = embeddings.cluster(vectors, "kmeans", len(set(corpus.labels)))
    assert embeddings.cluster_scores(corpus.labels, ids)["nmi"] > 0.5


def test_projection_is_seeded(chatterbot):
    _, vectors = chatterbot
    sample = vectors[:300]
    np.testing.assert_allclose(embeddings.project(sample, "tsne"), embeddings.project(sample, "tsne"))


def test_classification_beats_the_majority_class(chatterbot):
    corpus, vectors = chatterbot
    result = embeddings.classify(vectors, corpus.labels, corpus.texts)
    assert result.accuracy > result.majority_baseline + 0.25
    assert result.confusion.shape == (len(result.classes),) * 2 and result.misclassified


def test_documents_without_a_label_are_left_out_and_labels_need_documents_to_test_on(tmp_path):
    """With a label column, a row whose label is missing, null or blank is left out (and said),
    not a class named "None"; classification needs two labels with a document to learn from
    and one to test on (30 labels of one document each scored 0.000)."""
    import json

    from core.errors import LabError

    rows = [{"text": f"note {i} about {'cats' if i % 2 else 'dogs'}", "label": ["cat", None, "dog", " "][i % 4]}
            for i in range(12)] + [{"text": "a note with no label field"}]
    (tmp_path / "notes.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    corpus = load_corpus(str(tmp_path / "notes.jsonl"), label_column="label")
    assert corpus.labels == ["cat", "dog"] * 3 and "7 documents without a label in 'label' left out." in corpus.note
    assert embeddings.check_labels(corpus.labels) == {"cat": 3, "dog": 3}
    with pytest.raises(LabError, match="this corpus has 30 labels, 0 with 2 or more"):
        embeddings.check_labels([f"c{i}" for i in range(30)])
    with pytest.raises(LabError, match="this corpus has 2 labels, 1 with 2 or more"):
        embeddings.check_labels(["a"] * 29 + ["b"])


def test_corpus_cap_is_explained():
    corpus = load_corpus("guardian-headlines", max_docs=100)
    assert len(corpus.texts) == 100 and "Using 100 of 4080" in corpus.note
    debates = load_corpus("debates-2016")
    assert debates.labels and "TRUMP" in debates.labels
    from core.data.rows import DataError

    with pytest.raises(DataError, match=r"^max_docs=-5: use 1 or more\.$"):  # pandas' sample raised on it
        load_corpus("guardian-headlines", max_docs=-5)


def test_fast_topics_on_headlines_and_every_figure(headlines):
    table = headlines.table()
    assert len(table[table.Topic != -1]) >= 5
    assert all(words for words in table.Representation)
    words = [word for row in table.Representation for word in row.split(", ")]
    assert not [word for word in words if word.isdigit()]  # "000", from "£1,000", named a topic
    assert words.count("uk") <= 2, words  # in most headlines: weighed down, not in every topic
    for name in FIGURES:  # BERTopic's own figure, drawn: traces, not a placeholder's message
        fig = figure(headlines, name)
        assert fig.data and any(len(trace.x if trace.x is not None else trace.z) for trace in fig.data), name
        assert not [a for a in fig.layout.annotations if "could not draw" in (a.text or "")], name
    found = search_topics(headlines, "coronavirus pandemic")
    assert found and "coronavirus" in " ".join(words for _, _, words in found)


def test_a_corpus_without_topics_in_it_is_one_line_before_the_embedding(tmp_path, capsys):
    """Too few documents, or different ones, or words a topic could be named by: each is one
    line, from the CLI before anything is embedded (40 copies of one document, and documents of
    one word and numbers, crashed in BERTopic's c-TF-IDF; stop words alone in scikit-learn)."""
    import json

    from cli import main as cli

    texts = ["cats purr", "dogs bark", "birds sing", "fish swim", "cows moo"]
    with pytest.raises(TopicsError, match="at least 10 different documents; this corpus has 5"):
        fit_topics(texts, embeddings.embed(texts))
    corpora = {"copies": ["same text here"] * 40, "one-word": [f"apple {i}" for i in range(20)],
               "stop-words": [f"the and {word}" for word in ("of", "to", "in", "is", "it", "that", "was", "for", "on", "as")]}
    for name, documents in corpora.items():
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"text": text}) + "\n" for text in documents))
        assert cli(["topics", "--corpus", str(tmp_path / f"{name}.jsonl"), "--out", str(tmp_path / "out")]) == 2
    printed = capsys.readouterr()
    assert "Embedding" not in printed.out and [line for line in printed.err.splitlines() if "error" in line] == [
        "error: Topic modelling needs at least 10 different documents; this corpus has 40 (1 different).",
        "error: The documents hold 1 word(s) a topic could be named by (stop words and bare numbers do not count): "
        "nothing to make topics of.",
        "error: The documents hold 0 word(s) a topic could be named by (stop words and bare numbers do not count): "
        "nothing to make topics of."]
    two_words = [f"{'apple' if i % 2 else 'pear'} {i}" for i in range(20)]  # the fewest a model is made of
    table = fit_topics(two_words, embeddings.embed(two_words), "fast", 2).table()
    assert set(table["Representation"]) <= {"apple", "pear", "apple, pear", "pear, apple"}, table  # no "" words


def test_two_topics_give_a_fallback_intertopic_figure():
    texts = [f"the cat number {i} purrs softly" for i in range(6)] + [f"stock market {i} falls hard" for i in range(6)]
    result = fit_topics(texts, embeddings.embed(texts), "fast", 2)
    fig = figure(result, "topics")
    assert "needs at least 3 topics" in fig.layout.annotations[0].text


@pytest.mark.slow
def test_llm_names_topics(headlines, smol):
    from copy import deepcopy

    small = deepcopy(headlines)
    labels = label_topics(small, max_topics=3)
    topics = [t for t in sorted(labels) if t != -1][:3]
    named = [labels[t] for t in topics]
    fallbacks = [small.model.get_topic(t)[0][0] for t in topics]  # a topic's first keyword, if the model says nothing
    assert len(set(named)) == 3 and all(0 < len(name.split()) <= 8 and len(name) <= 60 for name in named), named
    assert named != fallbacks, "the chat model named them, not the fallback"
    table = small.table().set_index("Topic")
    assert [table.loc[t, "CustomName"] for t in topics] == named


@pytest.mark.slow
def test_cli_topics_writes_table_and_figures(tmp_path):
    out = subprocess.run([sys.executable, "cli.py", "topics", "--corpus", "guardian-headlines", "--max-docs", "600",
                          "--topics", "8", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "topics.csv").read_text().count("\n") >= 8
    assert all((tmp_path / f"{name}.html").stat().st_size > 1000 for name in FIGURES)


def test_cli_embed_clusters_and_classifies_as_the_tab_does(chatterbot, tmp_path, capsys):
    """`cli.py embed`: the tab's cluster scores and classifier, as text, on the corpus's cached
    embeddings; clusters.csv holds every document; a flag combination that cannot work is one
    line before any file is made."""
    from cli import main as cli

    corpus, vectors = chatterbot
    out = tmp_path / "clusters"
    assert cli(["embed", "--corpus", "chatterbot", "--cluster", "kmeans", "--clusters", "5",
                "--classify", "logreg", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    ids = embeddings.cluster(vectors, "kmeans", 5)
    scores = embeddings.cluster_scores(corpus.labels, ids)
    assert f"5 clusters · NMI {scores['nmi']} · ARI {scores['ari']} against the labels (kmeans)" in printed
    result = embeddings.classify(vectors, corpus.labels, corpus.texts, "logreg")
    assert f"Accuracy {result.accuracy:.3f} · macro-F1 {result.macro_f1:.3f}" in printed
    coding = next(line.split() for line in printed.splitlines() if line.strip().startswith("coding "))
    assert int(coding[1]) == int(np.asarray(result.confusion)[result.classes.index("coding")].sum())
    written = (out / "clusters.csv").read_text().splitlines()
    assert written[0] == "cluster,label,text" and len(written) == len(corpus.texts) + 1
    assert cli(["embed", "--out", str(tmp_path / "none")]) == 2 and not (tmp_path / "none").exists()
    assert cli(["embed", "--corpus", "guardian-headlines", "--classify", "knn"]) == 2
    assert cli(["embed", "--corpus", "chatterbot", "--max-docs", "30", "--cluster", "kmeans", "--clusters", "31"]) == 2
    printed = capsys.readouterr()
    assert "Embedding" not in printed.out and printed.err.splitlines() == [  # each before the embedding
        "error: --out writes the clusters: add --cluster kmeans or --cluster hdbscan.",
        "error: This corpus has no label column: pick one to classify.",
        "error: KMeans needs 2 to 30 clusters for 30 documents."]
