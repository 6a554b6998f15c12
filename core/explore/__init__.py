"""Embeddings, clusters, classifiers and topics over a corpus."""
