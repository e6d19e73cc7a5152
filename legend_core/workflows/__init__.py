"""The method over stored data: annotate a stored data set, learn from stored labels, the demo."""
