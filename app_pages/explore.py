"""Annotate and explore: compute a data set's margins on a direction, look at them, and pick
pairs for review (lasso or box on the charts, or filters)."""

import streamlit as st

from app_pages import _common as ui
from legend_core import config
from legend_core.app import charts, maps, views
from legend_core.app.queue import selected_pairs
from legend_core.workflows import annotate

st.title("Annotate and explore")
st.caption(
    "A margin is the projection of (chosen − rejected) on the direction: positive when the "
    "chosen response is the safer one. Negative margins are where the direction disagrees "
    "with the label, the first pairs to review."
)
s = ui.store()
url = config.database_url()
seen_by = ui.seen_by()  # whose reviews this viewer sees (blind review: their own)
admins = tuple(sorted(ui.admins()))  # whose verdicts adjudicate (login mode)

c1, c2 = st.columns(2)
with c1:
    dataset = ui.pick_dataset(s, "explore")
with c2:
    direction = ui.pick_direction(s, "explore")
if dataset is None:
    ui.empty("No data sets yet: load the demo on Home.", "app_pages/home.py", "Home")
    st.stop()
if direction is None:
    ui.empty("No directions yet: build one first.", "app_pages/directions.py", "Direction lab")
    st.stop()

runs = [r for r in s.list_runs(dataset.id) if r.direction_id == direction.id]
run = ui.pick_run_of(runs, "explore")  # newest by default; every run is listed
key = f"annotate:{url}:{dataset.id}:{direction.id}"
job = ui.job(key)
running = job is not None and job.running
left = dataset.n_pairs - (run.n_margins if run else 0)
if not running and left > 0:
    label = "Compute margins" if not run or not run.n_margins else f"Resume ({left:,} left)"
    st.caption(
        f"{left:,} of {dataset.n_pairs:,} pairs have no margin yet. Embeddings are cached: a "
        "second direction with the same model, layer and settings needs no forward pass."
    )
    if st.button(label, type="primary", icon=":material/play_arrow:"):
        lm = ui.model(s.get_direction(direction.id).model)
        if lm is not None:
            ui.jobs().start(
                key,
                "Computing margins",
                annotate.annotate_dataset,
                s,
                lm,
                dataset.id,
                direction.id,
            )
            st.rerun()
if run is None or run.n_margins == 0:
    if not running:
        st.info("No margins yet for this data set and direction.", icon=":material/info:")
    st.stop()


@st.cache_data(show_spinner=False, max_entries=4)
def run_frame(
    db: str,
    run_id: int,
    n_margins: int,
    n_reviews: int,
    seen_by: str | None,
    admins: tuple[str, ...] = (),
):
    """The run's pairs with percentiles; refreshed when margins or reviews change. Under
    blind review the review state is the viewer's own."""
    frame = ui.store().run_frame(run_id, annotator=seen_by, admins=admins)
    return views.with_lengths(views.with_percentiles(frame))


@st.cache_data(show_spinner="Laying out the map…", max_entries=4)
def pca_map(db: str, run_id: int, n_margins: int, seen_by: str | None):
    """PCA of every response: instant, so it is computed here and cached."""
    run_info = ui.store().get_run(run_id)
    d = ui.store().get_direction(run_info.direction_id)
    pairs = run_frame(db, run_id, n_margins, 0, seen_by, admins)
    return maps.response_map(ui.store(), run_info, d, pairs, "pca")


def umap_map(points: int):
    """UMAP runs in the background (a first run compiles for several seconds): the rest of
    the page stays usable, and the finished map is kept for the process."""
    key = f"map:{url}:{run.id}:{run.n_margins}:{points}:{seen_by}"
    job = ui.jobs().get(key)
    if job is not None and job.status == "failed":
        ui.job(key)
        if st.button("Try again", key="map_retry"):
            ui.jobs().forget(key)
            st.rerun()
        return None
    if job is None:
        d = s.get_direction(run.direction_id)
        pairs = run_frame(url, run.id, run.n_margins, 0, seen_by, admins)
        job = ui.jobs().start(
            key,
            "Laying out the UMAP map",
            lambda progress: maps.response_map(s, run, d, pairs, "umap", points),
        )
    if job.running:
        ui.job(key)
        st.caption("The other tabs work meanwhile; the map appears when it is ready.")
        return None
    return job.result


frame = run_frame(url, run.id, run.n_margins, s.counts()["reviews"], seen_by, admins)
summary = views.summarize(frame)
m = st.columns(4)
m[0].metric("Pairs with a margin", f"{summary.n:,}", help=f"{summary.n_missing:,} still missing")
m[1].metric(
    "Agreement", f"{summary.agree:.1%}", help="Share of positive margins (a zero margin: ½)."
)
m[2].metric("Negative margins", f"{summary.n_negative:,}")
m[3].metric("Median margin", f"{summary.median:.3f}")

st.subheader("Filter")
lo, hi = views.finite_range(frame["effective_margin"])
f1, f2, f3 = st.columns([2, 1, 2])
fmt, step = views.slider_format(lo, hi)
span = f1.slider("Margin range", lo, hi, (lo, hi), step, fmt, key=f"range_{run.id}")
sign = f2.selectbox("Sign", views.SIGNS, key="explore_sign")
text = f3.text_input("Text contains", key="explore_text", placeholder="search prompt and texts")
margin_range = None if span == (lo, hi) else span
filtered = views.filter_pairs(frame, margin_range, sign, text)
st.caption(f"{len(filtered):,} of {len(frame):,} pairs pass the filter.")


def send(pair_ids: list[int], what: str) -> None:
    """Put pairs in the review queue (this session) and point to the Review page."""
    st.session_state["review_selection"] = {"run_id": run.id, "pair_ids": pair_ids}
    st.session_state["review_source"] = "selection"
    st.session_state.pop("review_current", None)
    st.success(f"{len(pair_ids):,} {what} pairs are in the review queue.")
    st.page_link("app_pages/review.py", label="Review them", icon=":material/arrow_forward:")


@st.fragment
def charts_pane(filtered) -> None:
    """Map and scatter with lasso/box selection; reruns alone when the selection changes."""
    keep = set(filtered["pair_id"])
    tab_map, tab_len, tab_hist, tab_table = st.tabs(
        ["Map", "Margin vs length", "Histogram", "Table"]
    )
    selected: list[int] = []
    with tab_len:
        state = st.plotly_chart(
            charts.margin_length_scatter(filtered),
            key=f"length_{run.id}",
            on_select="rerun",
            selection_mode=("box", "lasso"),
        )
        selected += selected_pairs(state.selection.points)
        r = views.correlation(filtered["length_diff"], filtered["effective_margin"])
        st.caption(f"Correlation of margin and length difference: r = {r:.2f}.")
    with tab_hist:
        st.plotly_chart(charts.margin_histogram(filtered["effective_margin"]))
    with tab_table:
        st.dataframe(
            views.table_view(filtered.sort_values("effective_margin").head(1000)),
            hide_index=True,
            column_config={
                "margin": st.column_config.NumberColumn(format="%.3f"),
                "percentile": st.column_config.NumberColumn(format="%.0f"),
            },
        )
        st.caption("Lowest margins first; up to 1,000 rows.")
    with tab_map:  # last: the other tabs never wait for the map
        a, b = st.columns([1, 2])
        method = a.selectbox(
            "Layout", maps.MAP_METHODS, format_func={"umap": "UMAP", "pca": "PCA"}.get
        )
        points = b.select_slider(
            "Responses in the UMAP sample",
            [500, 1000, 2000, 3000, 5000],
            value=2000,
            disabled=method == "pca",
        )
        if method == "pca":
            layout = pca_map(url, run.id, run.n_margins, seen_by)
        else:
            layout = umap_map(points)
        if layout is not None:
            shown = layout.frame[layout.frame["pair_id"].isin(keep)]
            if shown.empty:
                st.info("No mapped responses pass the filter.", icon=":material/info:")
            else:
                state = st.plotly_chart(
                    charts.response_map(shown),
                    key=f"map_{run.id}",
                    on_select="rerun",
                    selection_mode=("box", "lasso"),
                )
                selected += selected_pairs(state.selection.points)
            st.caption(
                layout.note + " Embeddings come from the cache; no model runs here. "
                "Drag a box or a lasso to select pairs."
            )
    selected = list(dict.fromkeys(selected))
    row = st.container(horizontal=True)
    if row.button(
        f"Review the {len(selected):,} selected pairs",
        disabled=not selected,
        type="primary",
        icon=":material/rate_review:",
    ):
        send(selected, "selected")
    if row.button(f"Review the {len(filtered):,} filtered pairs", disabled=filtered.empty):
        # The Review page orders them (Store.review_queue), as it orders every queue.
        send([int(p) for p in filtered["pair_id"]], "filtered")


charts_pane(filtered)
