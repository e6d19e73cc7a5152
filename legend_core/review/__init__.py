"""The review rules (what a set of verdicts decides) and agreement between annotators.

Pure Python: no model, no database.
"""
