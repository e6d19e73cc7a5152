"""The Legend method: load a model, read hidden states, fit directions, project margins.

Nothing here touches the database or Streamlit (ARCHITECTURE.md).
"""
