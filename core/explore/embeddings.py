"""Embed documents with sentence-transformers (cached on disk), cluster, project, classify.

    python -c "from core.explore.embeddings import embed; print(embed(['hello', 'world']).shape)"

An embedder is a name (core.explore.embedders says which model it means). The cache key is
the model's key (a tuned embedder run's name and finish time, so a run deleted and trained
again under the same name never reuses old vectors) plus a hash of every text, so re-running on the same corpus
loads a .npy file instead of encoding. The corpora used last also stay in memory (RECENT, at
most RECENT_BYTES): Embed, Cluster, Classify and Topics each embed the same corpus, and a
public app's visitors, whose embeddings are never written to disk, would otherwise encode it
again on every click (13 s for 4,080 headlines on 2 cores). Every projection and split is seeded.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from core import threads
from core.errors import LabError
from core.explore.embedders import DEFAULT_EMBEDDER, embedder_key, embedder_source
from core.paths import data_dir


ENCODED = {"texts": 0}  # how many texts were actually encoded (tests check the cache with it)
_MODELS: dict = {}
_LOCK = threading.Lock()
RECENT: OrderedDict[str, np.ndarray] = OrderedDict()  # cache key -> vectors, the newest last
RECENT_BYTES = 64 * 2**20
MAX_CLASSES = 50
_RECENT_LOCK = threading.Lock()


def load_embedder(name: str = DEFAULT_EMBEDDER):
    """A SentenceTransformer, shared (read-only) by every caller of the process."""
    from sentence_transformers import SentenceTransformer

    from core.inference.models import ModelError

    key = embedder_key(name)
    with _LOCK:
        if key not in _MODELS:
            try:
                _MODELS[key] = SentenceTransformer(embedder_source(name), device="cpu", trust_remote_code=False)
            except OSError as exc:
                raise ModelError(f"Could not load embedding model '{key}': {str(exc).splitlines()[0]}") from None
        return _MODELS[key]


def embed(texts: list[str], model: str = DEFAULT_EMBEDDER, progress=None, batch_size: int = 64,
          write_cache: bool = True) -> np.ndarray:
    """Normalised embeddings, shape (len(texts), dim); `progress(fraction)` is called per batch.

    `write_cache=False` reads the cache but adds nothing to it (a public app's visitors)."""
    digest = hashlib.sha256(embedder_key(model).encode())
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    key = digest.hexdigest()[:32]
    with _RECENT_LOCK:
        if key in RECENT:
            RECENT.move_to_end(key)
            return RECENT[key].copy()  # callers own their array
    cache = data_dir() / "embeddings" / f"{key}.npy"
    if cache.is_file():
        return _remember(key, np.load(cache))
    # In a thread of its own, so that its torch threads end with it (see core.threads).
    vectors = threads.in_own_thread(_encode, texts, model, progress, batch_size)
    if write_cache:
        cache.parent.mkdir(exist_ok=True)
        tmp = cache.with_suffix(".tmp.npy")
        np.save(tmp, vectors)
        tmp.replace(cache)
    return _remember(key, vectors)


def _remember(key: str, vectors: np.ndarray) -> np.ndarray:
    """Keep a copy in RECENT, dropping the least recently used past RECENT_BYTES (a corpus
    larger than that on its own is not kept)."""
    with _RECENT_LOCK:
        RECENT[key] = vectors.copy()
        while RECENT and sum(v.nbytes for v in RECENT.values()) > RECENT_BYTES:
            RECENT.popitem(last=False)
    return vectors


def _encode(texts: list[str], model: str, progress, batch_size: int) -> np.ndarray:
    encoder = load_embedder(model)
    parts = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start:start + batch_size]
        parts.append(encoder.encode(batch, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False))
        ENCODED["texts"] += len(batch)
        if progress:
            progress(min(1.0, (start + len(batch)) / len(texts)))
    return np.vstack(parts).astype(np.float32)


def cluster(vectors: np.ndarray, method: str = "kmeans", n_clusters: int = 8, min_cluster_size: int = 10,
            seed: int = 0) -> np.ndarray:
    """Cluster ids per document (-1: HDBSCAN noise)."""
    from hdbscan import HDBSCAN  # the one BERTopic uses too (its approximate_predict needs it)
    from sklearn.cluster import KMeans

    check_clusters(len(vectors), method, n_clusters)
    if method == "kmeans":
        return KMeans(n_clusters=n_clusters, random_state=seed, n_init=4).fit_predict(vectors)
    return HDBSCAN(min_cluster_size=max(2, int(min_cluster_size))).fit_predict(vectors)


def check_clusters(documents: int, method: str, n_clusters: int) -> None:
    """A one-line error unless `method` can cluster `documents` documents: callers check before
    the embedding too."""
    if method not in ("kmeans", "hdbscan"):
        raise LabError(f"Unknown clustering method {method!r}: use kmeans or hdbscan.")
    if method == "kmeans" and not 2 <= n_clusters <= documents:
        raise LabError(f"KMeans needs 2 to {documents} clusters for {documents} documents.")


def project(vectors: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """A seeded 2-D projection, so the map is identical on every run."""
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(vectors)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = max(2, min(30, (len(vectors) - 1) // 3))
        return TSNE(n_components=2, random_state=seed, perplexity=perplexity, init="pca").fit_transform(vectors)
    if method == "umap":
        from umap import UMAP

        return UMAP(n_components=2, random_state=seed, n_neighbors=min(15, len(vectors) - 1)).fit_transform(vectors)
    raise LabError(f"Unknown projection {method!r}: use pca, tsne or umap.")


def separation_scores(train_vectors, train_labels, held_vectors, held_labels) -> dict:
    """How well an embedder separates labels, on held-out rows: the accuracy of logistic
    regression fitted on the training rows; NMI and ARI of KMeans with as many clusters as the
    held-out labels; the labels' silhouette (cosine)."""
    from sklearn.cluster import KMeans
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import silhouette_score

    classes = len(set(held_labels))
    accuracy = LogisticRegression(max_iter=2000).fit(train_vectors, train_labels).score(held_vectors, held_labels)
    clusters = KMeans(n_clusters=max(2, classes), random_state=0, n_init=4).fit_predict(held_vectors)
    silhouette = silhouette_score(held_vectors, held_labels, metric="cosine") if 2 <= classes < len(held_labels) else None
    return {"accuracy": round(float(accuracy), 3), **cluster_scores(held_labels, clusters),
            "silhouette": None if silhouette is None else round(float(silhouette), 3)}


def retrieval_scores(anchors, positives) -> dict:
    """For pairs (normalised vectors, row i belongs with row i): how often an anchor's nearest
    positive is its own (top-1), and the mean reciprocal rank of its own."""
    similarity = anchors @ positives.T
    ranks = (similarity > similarity.diagonal()[:, None]).sum(axis=1) + 1
    return {"top1": round(float((ranks == 1).mean()), 3), "mrr": round(float((1 / ranks).mean()), 3)}


def cluster_summary(labels, clusters) -> str:
    """"N clusters · NMI x · ARI y against the labels" (or that there are none to score against)."""
    scores = cluster_scores(labels, clusters) if labels else {}
    return f"{len(set(clusters) - {-1})} clusters" + (
        f" · NMI {scores['nmi']} · ARI {scores['ari']} against the labels" if scores else " · no labels to score against")


def cluster_table(texts: list[str], clusters):
    """One row per cluster: its id, size and first three texts (cut to 80 characters)."""
    import pandas as pd

    groups = pd.DataFrame({"cluster": clusters, "text": texts}).groupby("cluster")["text"]
    return pd.DataFrame({"cluster": groups.size().index, "size": groups.size().values,
                         "examples": [" | ".join(t[:80] for t in group[:3]) for _, group in groups]})


def cluster_scores(labels, clusters) -> dict:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return {"nmi": round(float(normalized_mutual_info_score(labels, clusters)), 3),
            "ari": round(float(adjusted_rand_score(labels, clusters)), 3)}


@dataclass
class Classification:
    """A fitted classifier on embeddings and its held-out scores."""

    model: object
    accuracy: float
    macro_f1: float
    majority_baseline: float
    classes: list
    confusion: np.ndarray
    misclassified: list = field(default_factory=list)  # (text, true, predicted)


def check_labels(labels) -> dict:
    """The count of each label, or a one-line error when classification cannot use them: none,
    one, over MAX_CLASSES (a confusion matrix and its plot grow with the square of that; the
    text column, picked by mistake), or fewer than two with a document to learn from and one to
    test on."""
    from collections import Counter

    counts = Counter(labels or [])
    if not counts:
        raise LabError("This corpus has no label column: pick one to classify.")
    if len(counts) < 2:
        raise LabError("Classification needs at least two different labels.")
    if len(counts) > MAX_CLASSES:
        raise LabError(f"The label column has {len(counts)} different labels, at most {MAX_CLASSES} here: "
                       "is it the text column? Pick a column of categories.")
    if (enough := sum(count >= 2 for count in counts.values())) < 2:
        raise LabError(f"Classification needs two labels with 2 documents or more each (one to learn from, one to "
                       f"test on); this corpus has {len(counts)} labels, {enough} with 2 or more.")
    return counts


def classify(vectors, labels, texts, method: str = "logreg", test_size: float = 0.25, seed: int = 0) -> Classification:
    """Train logistic regression (or kNN) on a seeded stratified split and score it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
    from sklearn.model_selection import train_test_split
    from sklearn.neighbors import KNeighborsClassifier

    counts = check_labels(labels)
    stratify = labels if min(counts.values()) >= 2 else None
    idx_train, idx_test = train_test_split(np.arange(len(labels)), test_size=test_size, random_state=seed,
                                           stratify=stratify)
    y = np.asarray(labels)
    model = LogisticRegression(max_iter=2000) if method == "logreg" else KNeighborsClassifier(n_neighbors=5)
    model.fit(vectors[idx_train], y[idx_train])
    predicted = model.predict(vectors[idx_test])
    classes = sorted(counts)
    wrong = [(texts[i], y[i], p) for i, p in zip(idx_test, predicted) if y[i] != p]
    return Classification(model, float(accuracy_score(y[idx_test], predicted)),
                          float(f1_score(y[idx_test], predicted, average="macro")),
                          max(counts.values()) / len(labels), classes,
                          confusion_matrix(y[idx_test], predicted, labels=classes), wrong[:50])
