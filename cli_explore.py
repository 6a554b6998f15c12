"""The Embeddings and topics tab's commands for cli.py: topics, and embed (cluster, classify).

    python cli.py topics --corpus guardian-headlines --topics 12 --out topics-out
    python cli.py embed --corpus chatterbot --cluster kmeans --clusters 8 --out clusters   # labels: its categories
    python cli.py embed --corpus debates-2016 --classify logreg                            # who said it
    python cli.py embed --corpus notes.csv --text-column body --embedder MY-EMBED-RUN   # a tuned embedder

Each loads the corpus and its embeddings as the tab does (core.explore: cached on disk after
the first run) and prints what the tab shows, as text.
"""
from __future__ import annotations

from pathlib import Path

from cli_args import writable
from core.errors import LabError


def cmd_topics(args) -> int:
    from core.explore.embeddings import load_embedder
    from core.explore.topics import check_corpus, export, fit_topics

    out = writable(Path(args.out), folder=True)  # before the embedding, which takes minutes
    corpus, vectors = embedded(args, lambda corpus: check_corpus(corpus.texts))
    result = fit_topics(corpus.texts, vectors, args.method, args.topics, embedder=load_embedder(args.embedder))
    for path in export(result, out):
        print(path)
    print(result.table()[["Topic", "Count", "Representation"]].head(12).to_string(index=False))
    return 0


def cmd_embed(args) -> int:
    from core.explore.embeddings import check_clusters, check_labels

    if args.out and not args.cluster:
        raise LabError("--out writes the clusters: add --cluster kmeans or --cluster hdbscan.")
    out = writable(Path(args.out), folder=True) if args.out else None

    def usable(corpus) -> None:  # before the embedding, which takes minutes
        if args.cluster:
            check_clusters(len(corpus.texts), args.cluster, args.clusters)
        if args.classify:
            check_labels(corpus.labels)

    corpus, vectors = embedded(args, usable)
    print(f"{len(corpus.texts)} documents, embeddings {vectors.shape[1]}-d ({args.embedder}). {corpus.note}".strip())
    if args.cluster:
        print_clusters(args, corpus, vectors, out)
    if args.classify:
        print_classification(args.classify, corpus, vectors)
    return 0


def embedded(args, check=None):
    """(corpus, its embeddings) for the corpus flags; `check(corpus)` runs before the embedding
    (labels a classifier can use, documents topics can be made of)."""
    from core.explore.corpora import load_corpus
    from core.explore.embeddings import embed

    corpus = load_corpus(args.corpus, args.text_column, args.label_column, args.max_docs)
    if check is not None:
        check(corpus)
    print(f"Embedding {len(corpus.texts)} documents with {args.embedder}...", flush=True)
    return corpus, embed(corpus.texts, args.embedder)


def print_clusters(args, corpus, vectors, out: Path | None) -> None:
    """The tab's summary and cluster table, as text; clusters.csv holds every document's cluster."""
    import pandas as pd

    from core.explore.embeddings import cluster, cluster_summary, cluster_table

    ids = cluster(vectors, args.cluster, args.clusters, args.min_size)
    print(f"{cluster_summary(corpus.labels, ids)} ({args.cluster})")
    print(cluster_table(corpus.texts, ids).to_string(index=False, max_colwidth=100))
    if out is not None:
        frame = pd.DataFrame({"cluster": ids, "label": corpus.labels or [""] * len(ids), "text": corpus.texts})
        frame.to_csv(out / "clusters.csv", index=False)
        print(out / "clusters.csv")


def print_classification(method: str, corpus, vectors) -> None:
    """The scores, then one line per label from the confusion matrix: its held-out rows, how many
    were right, and the label it was most often taken for (a wide matrix does not read as text)."""
    import numpy as np
    import pandas as pd

    from core.explore.embeddings import classify

    result = classify(vectors, corpus.labels, corpus.texts, method)
    print(f"Accuracy {result.accuracy:.3f} · macro-F1 {result.macro_f1:.3f} · majority class "
          f"{result.majority_baseline:.3f} ({method}, seeded 75/25 split)")
    confusion = np.asarray(result.confusion)
    rows = []
    for i, label in enumerate(result.classes):
        wrong = confusion[i].copy()
        wrong[i] = 0
        rows.append({"label": label, "held out": int(confusion[i].sum()), "right": int(confusion[i, i]),
                     "most often taken for": result.classes[int(wrong.argmax())] if wrong.any() else ""})
    print(pd.DataFrame(rows).to_string(index=False))
