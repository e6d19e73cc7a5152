"""What the pages compute, as plain functions and classes: no Streamlit import here."""
