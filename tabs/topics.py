"""Embeddings and topics tab: embed a corpus, cluster it on a 2-D map, classify it, explore topics.

Handlers take the corpus settings (the first six widgets, as Gradio passes them), make one
CorpusRequest of them, and reload the corpus and its embeddings each time: the
embeddings come from the on-disk cache after the first run, so that costs milliseconds and
keeps the handlers stateless. Only the fitted topic model and classifier live in gr.State, for
STATE_TTL_S after their last change. Every listener that embeds shares one pool of slots across
all sessions (core.request_limits.HEAVY_EVENTS, with the data previews), so new session ids buy
no more memory or cores.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from core.explore import topics as topic_core
from core.access import LIMITS, AccessDenied, check_data_source, clamp, is_trusted
from core.explore.corpora import CORPORA, DEFAULT_MAX_DOCS, load_corpus
from core.explore.embedders import DEFAULT_EMBEDDER, PACKAGED_EMBEDDERS, is_tuned_embedder, tuned_embedders
from core.explore.embeddings import (check_clusters, check_labels, classify, cluster, cluster_summary, cluster_table, embed,
                                     load_embedder, project)
from core.errors import LabError
from core.request_limits import HEAVY_EVENTS
from tabs.feedback import shows_errors, warn
from tabs.session import download_path

STATE_TTL_S = 1800


@dataclass
class CorpusRequest:
    """The corpus settings every handler of the tab shares (the first six widgets, `spec`)."""

    source: str
    upload: str | None = None
    text_column: str = ""
    label_column: str = ""
    max_docs: int = DEFAULT_MAX_DOCS
    embedder: str = DEFAULT_EMBEDDER

    def load(self, request=None, progress=None, projection: str = "pca", check=None):
        """The corpus and its embeddings. A public app's visitors get the packaged embedder only,
        an uploaded corpus of at most LIMITS["corpus_bytes"], a capped document count, no new
        files in the embedding cache, and t-SNE/UMAP maps only for small corpora; those limits
        and `check(corpus)` (a classification's labels, a topic model's documents) are checked
        before anything is embedded."""
        upload = self.upload
        check_data_source(upload or self.source, CORPORA, request, own_uploads=[upload] if upload else [])
        if upload and Path(upload).is_file() and Path(upload).stat().st_size > clamp("corpus_bytes", 2**62, request):
            raise AccessDenied(f"On a public app, an uploaded corpus may have at most "
                               f"{LIMITS['corpus_bytes'] // 2**20} MB; log in for larger ones.")
        embedder = self.embedder_name
        if not is_trusted(request) and embedder not in PACKAGED_EMBEDDERS and not is_tuned_embedder(embedder):
            raise AccessDenied(f"On a public app, the embedder is {DEFAULT_EMBEDDER} or a tuned one of this app's "
                               "runs; other models need a login.")
        max_docs = clamp("max_docs", int(self.max_docs or DEFAULT_MAX_DOCS), request)
        corpus = load_corpus(upload or self.source, (self.text_column or "").strip(),
                             (self.label_column or "").strip(), max_docs)
        if projection != "pca" and len(corpus.texts) > clamp("projection_docs", len(corpus.texts), request):
            raise AccessDenied(f"On a public app, {projection} maps at most {LIMITS['projection_docs']} "
                               "documents: lower the document cap or use pca.")
        if check is not None:
            check(corpus)
        callback = (lambda f: progress(f, desc="Embedding")) if progress else None
        return corpus, embed(corpus.texts, embedder, progress=callback, write_cache=is_trusted(request))

    @property
    def embedder_name(self) -> str:
        return (self.embedder or "").strip() or DEFAULT_EMBEDDER


@shows_errors()
def embed_corpus(source, upload, text_column, label_column, max_docs, embedder, request: gr.Request = None,
                 progress=gr.Progress()):
    """Summary of the corpus and its embeddings (computed once, then cached)."""
    start = time.perf_counter()
    corpus, vectors = CorpusRequest(source, upload, text_column, label_column, max_docs, embedder).load(
        request, progress)
    labels = f", {len(set(corpus.labels))} labels" if corpus.labels else ", no labels"
    return (f"**{len(corpus.texts)} documents**{labels} · embeddings {vectors.shape[1]}-d in "
            f"{time.perf_counter() - start:.1f} s. {corpus.note}")


@shows_errors(lambda message: (None, message, None))
def run_clustering(source, upload, text_column, label_column, max_docs, embedder, method, n_clusters, min_size,
                   projection, color_by, request: gr.Request = None, progress=gr.Progress()):
    """(2-D map, scores markdown, cluster table)."""
    corpus, vectors = CorpusRequest(source, upload, text_column, label_column, max_docs, embedder).load(
        request, progress, projection, check=lambda corpus: check_clusters(len(corpus.texts), method, int(n_clusters)))
    ids = cluster(vectors, method, int(n_clusters), int(min_size))
    points = project(vectors, projection)
    text = f"{cluster_summary(corpus.labels, ids)}. {corpus.note}"
    return cluster_map(corpus, ids, points, color_by), text, cluster_table(corpus.texts, ids)


def cluster_map(corpus, ids, points, color_by: str):
    import plotly.express as px

    colour = corpus.labels if color_by == "label" and corpus.labels else [str(i) for i in ids]
    hover = [t[:120] for t in corpus.texts]
    fig = px.scatter(x=points[:, 0], y=points[:, 1], color=colour, hover_name=hover, height=520,
                     labels={"color": color_by, "x": "", "y": ""})
    fig.update_traces(marker=dict(size=5, opacity=0.75))
    return fig


@shows_errors(lambda message: (message, None, None, None))
def run_classification(source, upload, text_column, label_column, max_docs, embedder, method,
                       request: gr.Request = None, progress=gr.Progress()):
    """(scores markdown, confusion matrix, misclassified examples, fitted classifier)."""
    ask = CorpusRequest(source, upload, text_column, label_column, max_docs, embedder)
    corpus, vectors = ask.load(request, progress, check=lambda corpus: check_labels(corpus.labels))
    result = classify(vectors, corpus.labels, corpus.texts, method)
    result.embedder = ask.embedder_name
    import pandas as pd
    import plotly.express as px

    text = (f"Accuracy **{result.accuracy:.3f}** · macro-F1 **{result.macro_f1:.3f}** · majority class "
            f"{result.majority_baseline:.3f} ({method}, seeded 75/25 split)")
    fig = px.imshow(result.confusion, x=result.classes, y=result.classes, text_auto=True, height=520,
                    labels=dict(x="predicted", y="true"), color_continuous_scale="Blues")
    wrong = pd.DataFrame(result.misclassified, columns=["text", "true", "predicted"])
    return text, fig, wrong, result


def classify_text(result, text: str, embedder: str = DEFAULT_EMBEDDER) -> str:
    """Label one text with the classifier, embedded by the model it was trained with; another
    embedder would give vectors the classifier never saw, so a changed box is an error."""
    if result is None:
        return "Train a classifier first."
    if not (text or "").strip():
        return "Type a text to classify."
    if ((embedder or "").strip() or DEFAULT_EMBEDDER) != result.embedder:
        return warn(LabError(f"This classifier was trained on {result.embedder} embeddings: "
                             "train it again to use another embedding model."))
    vector = embed([text], result.embedder, write_cache=False)
    return f"→ **{result.model.predict(vector)[0]}**"


@shows_errors(lambda message: (message, None, *[None] * len(topic_core.FIGURES), None))
def run_topics(source, upload, text_column, label_column, max_docs, embedder, method, n_topics,
               request: gr.Request = None, progress=gr.Progress()):
    """(message, topic table, five figures, fitted result)."""
    ask = CorpusRequest(source, upload, text_column, label_column, max_docs, embedder)
    corpus, vectors = ask.load(request, progress, check=lambda corpus: topic_core.check_corpus(corpus.texts))
    result = topic_core.fit_topics(corpus.texts, vectors, method, int(n_topics), embedder=load_embedder(ask.embedder_name))
    return (_topics_message(result, corpus.note), result.table(),
            *[topic_core.figure(result, name) for name in topic_core.FIGURES], result)


@shows_errors(lambda message: (message, *[gr.update()] * (len(topic_core.FIGURES) + 3)))
def refit_with_tuned(source, upload, text_column, label_column, max_docs, embedder, method, n_topics,
                     request: gr.Request = None, progress=gr.Progress()):
    """Fit the topics again with the newest tuned embedder (a finished run of objective embed),
    in one click after training it; the picker shows which. Returns run_topics' outputs and
    the picker's value."""
    tuned = tuned_embedders()
    if not tuned:
        raise LabError("No tuned embedder yet: train one with the recipe embed_chatterbot (Train tab).")
    outputs = run_topics(source, upload, text_column, label_column, max_docs, tuned[0], method, n_topics,
                         request, progress)
    return (*outputs, tuned[0])


def _topics_message(result, note=""):
    n = len([t for t in result.model.get_topics() if t != -1])
    return f"{n} topics over {len(result.texts)} documents. {note}"


def search(result, query: str):
    import pandas as pd

    if result is None:
        return pd.DataFrame({"message": ["Fit topics first."]})
    try:
        rows = topic_core.search_topics(result, query or "")
    except LabError as exc:
        return pd.DataFrame({"message": [str(exc)]})
    return pd.DataFrame(rows, columns=["topic", "similarity", "top words"])


def label_with_llm(result, progress=gr.Progress()):
    if result is None:
        return "Fit topics first.", None, *[None] * len(topic_core.FIGURES)
    try:
        topic_core.label_topics(result, progress=lambda f: progress(f, desc="Naming topics"))
    except LabError as exc:
        return warn(exc), result.table(), *[gr.update()] * len(topic_core.FIGURES)
    return ("Topics named by the chat model.", result.table(),
            *[topic_core.figure(result, name) for name in topic_core.FIGURES])


@shows_errors(toast=True)  # the output is a file list: the message goes in a toast
def export_topics(result, request: gr.Request = None):
    """The topic table and figures as files, in a folder Gradio serves (see tabs.session)."""
    if result is None:
        return None
    out = download_path(request, f"topics-{time.strftime('%Y%m%d-%H%M%S')}")
    return [str(p) for p in topic_core.export(result, out)]


def build() -> None:
    """Lay out the Embeddings and topics tab: the corpus, then a tab each for clusters, a
    classifier and topics, each wiring its own events."""
    with gr.Row():
        source = gr.Dropdown(list(CORPORA), value=CORPORA[0], label="Bundled corpus")
        upload = gr.File(label="…or upload csv / jsonl / txt (one document per line)", type="filepath",
                         file_types=[".csv", ".jsonl", ".json", ".txt"])
    with gr.Row():
        text_column = gr.Textbox(label="Text column (uploads)", placeholder="text")
        label_column = gr.Textbox(label="Label column (optional)")
        max_docs = gr.Number(DEFAULT_MAX_DOCS, precision=0, minimum=1, label="Document cap")
        embedder = gr.Dropdown([DEFAULT_EMBEDDER, *tuned_embedders()], value=DEFAULT_EMBEDDER, allow_custom_value=True,
                               label="Embedding model", elem_id="embedder",
                               info="The packaged MiniLM, a run of objective embed (tuned), a Hub id or a path")
    spec = [source, upload, text_column, label_column, max_docs, embedder]
    embed_btn = gr.Button("Embed", variant="primary")
    corpus_info = gr.Markdown(elem_id="corpus-info")
    # Runs that finished after the page loaded show up when the picker is opened.
    embedder.focus(lambda: gr.update(choices=[DEFAULT_EMBEDDER, *tuned_embedders()]), None, embedder, api_name=False)
    embed_btn.click(embed_corpus, spec, corpus_info, api_name="embed", **HEAVY_EVENTS)
    _clusters_tab(spec)
    _classify_tab(spec, embedder)
    _topics_tab(spec, embedder)


def _clusters_tab(spec: list) -> None:
    with gr.Tab("Clusters"):
        with gr.Row():
            method = gr.Radio(["kmeans", "hdbscan"], value="kmeans", label="Clustering")
            n_clusters = gr.Slider(2, 60, 12, step=1, label="KMeans clusters")
            min_size = gr.Slider(2, 200, 15, step=1, label="HDBSCAN min cluster size")
            projection = gr.Radio(["pca", "tsne", "umap"], value="pca", label="2-D projection (seeded)")
            color_by = gr.Radio(["cluster", "label"], value="cluster", label="Colour by")
        cluster_btn = gr.Button("Cluster")
        cluster_info, cluster_plot = gr.Markdown(), gr.Plot(label="Map")
        cluster_tbl = gr.Dataframe(label="Clusters", interactive=False, max_height=300)
    cluster_btn.click(run_clustering, [*spec, method, n_clusters, min_size, projection, color_by],
                      [cluster_plot, cluster_info, cluster_tbl], api_name="cluster", **HEAVY_EVENTS)


def _classify_tab(spec: list, embedder) -> None:
    classifier_state = gr.State(None, time_to_live=STATE_TTL_S)
    with gr.Tab("Classify"):
        clf_method = gr.Radio(["logreg", "knn"], value="logreg", label="Classifier")
        clf_btn = gr.Button("Train and evaluate")
        clf_info, confusion = gr.Markdown(), gr.Plot(label="Confusion matrix")
        wrong = gr.Dataframe(label="Misclassified examples", interactive=False, max_height=300)
        with gr.Row():
            new_text = gr.Textbox(label="Classify a new text")
            predicted = gr.Markdown()
    clf_btn.click(run_classification, [*spec, clf_method], [clf_info, confusion, wrong, classifier_state],
                  api_name="classify", **HEAVY_EVENTS)
    new_text.submit(classify_text, [classifier_state, new_text, embedder], predicted, api_name=False, **HEAVY_EVENTS)


def _topics_tab(spec: list, embedder) -> None:
    topic_state = gr.State(None, time_to_live=STATE_TTL_S)
    with gr.Tab("Topics"):
        with gr.Row():
            topic_method = gr.Radio(["fast", "umap"], value="fast", label="Method (fast: PCA+KMeans)")
            n_topics = gr.Slider(2, 60, 20, step=1, label="Topics (fast method)")
            topics_btn = gr.Button("Fit topics", variant="primary", elem_id="fit-topics")
            name_btn = gr.Button("Name topics with the chat model")
            refit_btn = gr.Button("Fit again with the newest tuned embedder", elem_id="refit-tuned")
        topic_info = gr.Markdown(elem_id="topic-info")
        topic_tbl = gr.Dataframe(label="Topics", interactive=False, max_height=360)
        figures = []
        for name in topic_core.FIGURES:
            with gr.Tab(name.capitalize()):
                figures.append(gr.Plot(label=name, elem_id=f"topic-{name}"))
        with gr.Row():
            query = gr.Textbox(label="Find topics similar to…")
            export_btn = gr.Button("Export CSV + HTML")
        found = gr.Dataframe(interactive=False)
        files = gr.File(label="Exported files", file_count="multiple")
    topics_btn.click(run_topics, [*spec, topic_method, n_topics], [topic_info, topic_tbl, *figures, topic_state],
                     api_name="topics", **HEAVY_EVENTS)
    refit_btn.click(refit_with_tuned, [*spec, topic_method, n_topics], [topic_info, topic_tbl, *figures, topic_state,
                                                                        embedder], api_name="topics_tuned", **HEAVY_EVENTS)
    name_btn.click(label_with_llm, topic_state, [topic_info, topic_tbl, *figures], api_name=False, **HEAVY_EVENTS)
    query.submit(search, [topic_state, query], found, api_name=False)
    export_btn.click(export_topics, topic_state, files, api_name=False)
