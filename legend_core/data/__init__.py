"""Everything that lasts: data files in and out, the database, the embedding cache.

No torch here (ARCHITECTURE.md): the store can run on a machine without the model.
"""
