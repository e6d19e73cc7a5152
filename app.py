"""Legend Studio: the browser app. Pages live in pages/; this file only declares them and the
sidebar that every page shares. Run with ``streamlit run app.py``."""

import streamlit as st

from pages import _common

st.set_page_config(page_title="Legend Studio", page_icon=":material/explore:", layout="wide")

PAGES = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/data.py", title="Data", icon=":material/database:"),
    st.Page("pages/directions.py", title="Direction lab", icon=":material/science:"),
    st.Page("pages/explore.py", title="Annotate and explore", icon=":material/scatter_plot:"),
    st.Page("pages/review.py", title="Review", icon=":material/rate_review:"),
    st.Page("pages/evaluate.py", title="Evaluate", icon=":material/monitoring:"),
    st.Page("pages/export.py", title="Export", icon=":material/download:"),
]

_common.login_gate()
page = st.navigation(PAGES)
_common.sidebar()
page.run()
