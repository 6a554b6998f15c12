"""Topic models with BERTopic on precomputed embeddings, its own figures, search, labels, export.

    python cli.py topics --corpus guardian-headlines --method fast --out topics-out

"fast" is PCA(10) + KMeans (seconds on cached embeddings); "umap" is UMAP + HDBSCAN (BERTopic's
default, slower). Both are seeded. A topic's words leave out bare numbers and weigh down words
frequent in every topic (c-TF-IDF's reduce_frequent_words). A corpus BERTopic cannot make topics
of (too few documents, or different ones, or words) is refused by `check_corpus`, which callers
run before the embedding. Figures that BERTopic cannot draw for a given model (the intertopic
map needs at least 3 topics) come back as a figure that says why, never a crash.
"""
from __future__ import annotations

import re

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import LabError


MIN_DOCS = 10
FIGURES = ("topics", "barchart", "hierarchy", "documents", "heatmap")


class TopicsError(LabError):
    """A topic model that cannot be fitted on this input; the message is user-facing."""


@dataclass
class TopicResult:
    model: object  # the fitted BERTopic
    texts: list[str]
    embeddings: np.ndarray
    reduced_2d: np.ndarray

    def table(self):
        info = self.model.get_topic_info()
        keep = [c for c in ("Topic", "Count", "CustomName", "Name", "Representation", "Representative_Docs")
                if c in info.columns]
        info = info[keep].copy()
        # BERTopic pads a topic's words with "" where it has fewer than ten
        info["Representation"] = info["Representation"].map(lambda words: ", ".join([w for w in words if w][:8]))
        info["Representative_Docs"] = info["Representative_Docs"].map(lambda docs: " | ".join(d[:90] for d in docs[:2]))
        return info


def check_corpus(texts: list[str]) -> None:
    """Refuse, in one line, a corpus BERTopic cannot make topics of: under MIN_DOCS documents, or
    different documents, or under two words a topic could be named by (its c-TF-IDF fails on a
    vocabulary of one word, and the vectorizer on none). Cheap: run it before the embedding."""
    distinct = len(set(texts))
    if len(texts) < MIN_DOCS or distinct < MIN_DOCS:
        counted = f"{len(texts)}" + (f" ({distinct} different)" if distinct < len(texts) else "")
        raise TopicsError(f"Topic modelling needs at least {MIN_DOCS} different documents; this corpus has {counted}.")
    try:
        words = len(_vectorizer(len(texts)).fit(texts).vocabulary_)
    except ValueError:  # scikit-learn's "empty vocabulary"
        words = 0
    if words < 2:
        raise TopicsError(f"The documents hold {words} word(s) a topic could be named by (stop words and bare "
                          "numbers do not count): nothing to make topics of.")


def _vectorizer(documents: int):
    """A topic's words: no bare numbers ("000" of "£1,000") and no English stop words."""
    from sklearn.feature_extraction.text import CountVectorizer

    return CountVectorizer(stop_words="english", min_df=2 if documents >= 50 else 1, token_pattern=r"(?u)\b\w*[^\W\d_]\w*\b")


def fit_topics(texts: list[str], embeddings: np.ndarray, method: str = "fast", n_topics: int = 20,
               seed: int = 0, embedder=None) -> TopicResult:
    """Fit BERTopic on `texts` with their precomputed embeddings."""
    from bertopic import BERTopic
    from bertopic.vectorizers import ClassTfidfTransformer
    from sklearn.decomposition import PCA

    check_corpus(texts)
    n_topics = max(2, min(int(n_topics), len(texts) // 3))
    if method == "fast":
        from sklearn.cluster import KMeans

        reducer = PCA(n_components=min(10, len(texts) - 1, embeddings.shape[1]), random_state=seed)
        clusterer = KMeans(n_clusters=n_topics, random_state=seed, n_init=4)
    elif method == "umap":
        from hdbscan import HDBSCAN
        from umap import UMAP

        reducer = UMAP(n_neighbors=min(15, len(texts) - 1), n_components=5, min_dist=0.0, metric="cosine",
                       random_state=seed)
        clusterer = HDBSCAN(min_cluster_size=max(5, len(texts) // 100), prediction_data=True)
    else:
        raise TopicsError(f"Unknown method {method!r}: use fast or umap.")
    # Words frequent in every topic ("uk", "says" in headlines) weighed down, as BERTopic's guide advises.
    model = BERTopic(embedding_model=embedder, umap_model=reducer, hdbscan_model=clusterer,
                     vectorizer_model=_vectorizer(len(texts)), ctfidf_model=ClassTfidfTransformer(reduce_frequent_words=True),
                     calculate_probabilities=False)
    model.fit_transform(texts, embeddings)
    reduced = PCA(n_components=2, random_state=seed).fit_transform(embeddings)
    return TopicResult(model, texts, embeddings, reduced)


def figure(result: TopicResult, name: str):
    """One of BERTopic's own figures, or a placeholder figure explaining why it can't be drawn."""
    model = result.model
    n_topics = len([t for t in model.get_topics() if t != -1])
    custom = model.custom_labels_ is not None
    try:
        if name == "topics":
            if n_topics < 3:
                return message_figure(f"The intertopic map needs at least 3 topics; this model has {n_topics}.")
            return model.visualize_topics(custom_labels=custom)
        if name == "barchart":
            return model.visualize_barchart(top_n_topics=min(n_topics, 12), custom_labels=custom)
        if name == "hierarchy":
            if n_topics < 2:
                return message_figure("The hierarchy needs at least 2 topics.")
            return model.visualize_hierarchy(custom_labels=custom)
        if name == "documents":
            return model.visualize_documents(result.texts, reduced_embeddings=result.reduced_2d,
                                             custom_labels=custom, hide_annotations=n_topics > 20)
        if name == "heatmap":
            return model.visualize_heatmap(custom_labels=custom)
    except (ValueError, IndexError, TypeError) as exc:  # BERTopic's figures fail on degenerate models
        return message_figure(f"BERTopic could not draw the {name} figure: {str(exc).splitlines()[0][:160]}")
    raise TopicsError(f"Unknown figure {name!r}: use one of {', '.join(FIGURES)}.")


def message_figure(text: str):
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_annotation(text=text, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font=dict(size=15))
    fig.update_layout(height=300, xaxis=dict(visible=False), yaxis=dict(visible=False))
    return fig


def search_topics(result: TopicResult, query: str, top_n: int = 5) -> list[tuple[int, float, str]]:
    """Topics most similar to `query`: (topic id, similarity, top words)."""
    if not query.strip():
        raise TopicsError("Type something to search for.")
    topics, similarities = result.model.find_topics(query, top_n=top_n)
    return [(int(t), round(float(s), 3), ", ".join(w for w, _ in result.model.get_topic(t)[:6]))
            for t, s in zip(topics, similarities)]


def naming_settings():
    """The naming answers' settings: short, greedy, with the instruction as the system prompt."""
    from core.inference.chat import GenerationSettings

    return GenerationSettings(max_new_tokens=20,
                              system_prompt="You name topics in 2 to 4 words. Answer with the name only.")


def label_topics(result: TopicResult, chat_model: str = "smollm2-135m-instruct", max_topics: int = 30,
                 progress=None) -> dict[int, str]:
    """Ask the chat model for a short name per topic, from its top words and example documents.
    Every topic's question is one row of a single batched greedy generate: a decoding step
    reads the weights once for all its rows, where one reply at a time read them once per topic."""
    from core.inference.compare import stream_batch
    from core.inference.fast_decode import BASE
    from core.inference.models import load_model

    loaded = load_model(chat_model)
    settings = naming_settings()
    topic_ids = [t for t in sorted(result.model.get_topics()) if t != -1][:max_topics]
    questions = [[{"role": "user", "content": naming_question(result, t)}] for t in topic_ids]
    replies = ()
    if questions:
        for step, replies in enumerate(stream_batch(loaded, questions, [BASE] * len(questions), settings)):
            if progress:
                progress(min(1.0, (step + 1) / settings.max_new_tokens))
    labels = {t: _clean_label(reply.text) or topic_keywords(result, t).split(", ")[0]  # the first keyword
              for t, reply in zip(topic_ids, replies)}
    if -1 in result.model.get_topics():
        labels[-1] = "Outliers"
    result.model.set_topic_labels(labels)
    return labels


def topic_keywords(result: TopicResult, topic: int) -> str:
    """A topic's eight top words, comma-separated."""
    return ", ".join(w for w, _ in result.model.get_topic(topic)[:8])


def naming_question(result: TopicResult, topic: int) -> str:
    """What the chat model is asked about one topic: its keywords and three example documents."""
    docs = "\n".join(f"- {d[:120]}" for d in (result.model.get_representative_docs(topic) or [])[:3])
    return (f"Keywords: {topic_keywords(result, topic)}\nExample documents:\n{docs}\n"
            "What is a short name for this topic?")


_PREAMBLE = re.compile(r"^(?:a |the )?(?:short |good )?(?:name for (?:this|the) topic|topic name)"
                       r"(?: (?:could|would|might) be| is)?\s*:?\s*", re.IGNORECASE)


def _clean_label(text: str) -> str:
    """The name itself from a small model's answer: its first line, without a preamble such as
    'A short name for this topic could be', and the quoted part when it quotes one."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    line = _PREAMBLE.sub("", line.strip(" *#"))
    quoted = re.search(r"[\"“]([^\"”]+)", line)
    if quoted:
        line = quoted.group(1)
    return line.strip(" .\"'*:#“”")[:60]


def export(result: TopicResult, out: Path) -> list[Path]:
    """Write the topic table as CSV and every figure as HTML into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "topics.csv"]
    result.table().to_csv(written[0], index=False)
    for name in FIGURES:
        path = out / f"{name}.html"
        figure(result, name).write_html(path, include_plotlyjs="cdn")
        written.append(path)
    return written
