"""The method over stored data: annotate a stored data set, learn from stored labels, the demo,
and the embedding cache for pairs read from a file (``embeddings``)."""
