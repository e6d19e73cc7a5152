"""Legend Studio: the browser app, and its only entry script. Run it with ``make run`` or
``scripts/serve.sh``.

Every request runs this file first, whatever its URL: the serving check and the sign-in gate,
then the pages (``st.navigation``), then the sidebar they share. The page files live in
``app_pages/``, not ``pages/``: Streamlit runs the files of a ``pages/`` folder beside the entry
script on their own, without this file, until some session has called ``st.navigation`` (so
a deep link would skip the sign-in gate and the shared sidebar).
"""

import streamlit as st

from app_pages import _common

st.set_page_config(page_title="Legend Studio", page_icon=":material/explore:", layout="wide")


def _page(name: str, title: str, icon: str, default: bool = False) -> st.Page:
    # url_path is given, not left to the file name: each page's URL is part of the app
    # (bookmarks, links between colleagues).
    return st.Page(
        f"app_pages/{name}.py",
        title=title,
        icon=f":material/{icon}:",
        url_path=name,
        default=default,
    )


PAGES = [
    _page("home", "Home", "home", default=True),
    _page("data", "Data", "database"),
    _page("directions", "Direction lab", "science"),
    _page("explore", "Annotate and explore", "scatter_plot"),
    _page("review", "Review", "rate_review"),
    _page("evaluate", "Evaluate", "monitoring"),
    _page("export", "Export", "download"),
]

_common.serving_guard()
page = _common.login_gate(PAGES)  # in login mode, signed out: the sign-in form, then stop
_common.sidebar()
page.run()
