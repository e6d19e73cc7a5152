"""Review: the pairs the direction disagrees with first; accept, override, flip, flag, note."""

import pandas as pd
import streamlit as st

from legend_core import config, explore
from pages import _common as ui

st.title("Review")
others = (
    "others' reviews of a pair show once you have reviewed it (blind review)"
    if ui.seen_by() is not None
    else "reviews by others show up as soon as they are made"
)
st.caption(
    "The queue puts first the pairs with the most negative margins (the direction disagrees "
    f"with the label), then those near zero. Every action is stored with your name; {others}. "
    "Keys: A accept · F flip · G flag · O override · N next · P previous · U next unreviewed."
)
s = ui.store()
url = config.database_url()
run = ui.pick_run(s, "review")
if run is None:
    ui.empty(
        "No margins to review yet: compute them first.",
        "pages/explore.py",
        "Annotate and explore",
    )
    st.stop()

if not ui.annotator():
    st.warning("Enter your name in the sidebar to review.", icon=":material/person:")

selection = st.session_state.get("review_selection") or {}
has_selection = selection.get("run_id") == run.id and bool(selection.get("pair_ids"))
sources = ["all", "selection"] if has_selection else ["all"]
if st.session_state.get("review_source") not in sources:
    st.session_state["review_source"] = "all"
st.radio(
    "Queue",
    sources,
    key="review_source",
    horizontal=True,
    format_func={
        "all": "All pairs, disagreement first",
        "selection": f"Your selection ({len(selection.get('pair_ids', [])):,} pairs)",
    }.get,
)


@st.cache_data(show_spinner=False, max_entries=4)
def computed(db: str, run_id: int, n_margins: int) -> pd.Series:
    """The run's computed margins by pair id (they never change once computed)."""
    frame = ui.store().run_frame(run_id)
    return frame.set_index("pair_id")["computed_margin"]


def act(pair_id: int, action: str, following: int | None) -> None:
    """Button callback: store one review, then move on if asked to."""
    value = None
    if action == "override":
        value = st.session_state.get(f"override_{pair_id}")
    try:
        s.add_review(
            pair_id,
            ui.annotator(),
            action,
            value=value,
            note=st.session_state.get(f"note_{pair_id}", ""),
            run_id=run.id,
        )
    except ValueError as error:
        st.session_state["review_error"] = str(error)
        return
    st.session_state["review_done"] = f"Saved: {action} on pair {pair_id}."
    if st.session_state.get("review_advance", True) and following is not None:
        st.session_state["review_current"] = following


def go(pair_id: int | None) -> None:
    if pair_id is not None:
        st.session_state["review_current"] = pair_id


@st.fragment
def review_pane() -> None:
    """One pair at a time; its buttons rerun only this pane."""
    ids = selection.get("pair_ids") if st.session_state["review_source"] == "selection" else None
    queue = s.review_queue(run.id, "disagreement", pair_ids=ids)
    if not queue:
        st.info("This queue is empty.", icon=":material/info:")
        return
    current = st.session_state.get("review_current")
    if explore.queue_position(queue, current) is None:
        current = queue[0]
        st.session_state["review_current"] = current
    pos = explore.queue_position(queue, current)
    # Under blind review, counts and "next unreviewed" are this annotator's own: others'
    # progress would tell which pairs they reviewed.
    seen_by = ui.seen_by()
    reviewed, remaining = s.review_counts(run.id, annotator=seen_by)
    total = max(1, reviewed + remaining)
    by = " by you" if seen_by is not None else ""
    st.progress(reviewed / total, text=f"{reviewed:,} reviewed{by} · {remaining:,} remaining")

    prev_id, next_id = explore.step(queue, current, -1), explore.step(queue, current, 1)
    todo = s.review_queue(
        run.id, "disagreement", pair_ids=queue, unreviewed_only=True, annotator=seen_by
    )
    with st.container(horizontal=True, vertical_alignment="center"):
        st.button("Previous", shortcut="P", on_click=go, args=(prev_id,), disabled=pos == 0)
        st.button(
            "Next", shortcut="N", on_click=go, args=(next_id,), disabled=pos == len(queue) - 1
        )
        st.button(
            "Next unreviewed",
            shortcut="U",
            on_click=go,
            args=(explore.next_unreviewed(queue, current, todo),),
            disabled=not todo or todo == [current],
        )
        st.toggle("Go to the next pair after each action", value=True, key="review_advance")

    pair = s.get_pair(current)
    history = s.pair_history(current)
    # Blind review: others' verdicts stay hidden until this annotator has reviewed the pair.
    hidden = seen_by is not None and not any(h.annotator == seen_by for h in history)
    state = s.pair_state(current, run.id)
    margins = computed(url, run.id, run.n_margins)
    value = float(margins.get(current, float("nan")))
    effective = state.effective(value)
    m = st.columns(5)
    m[0].metric("Pair", f"{pos + 1:,} of {len(queue):,}", help=f"Pair id {current}")
    m[1].metric("Computed margin", f"{value:.3f}")
    m[2].metric("Percentile", f"{explore.percentile_of(margins.to_numpy(), value):.0f}")
    m[3].metric(
        "Effective margin",
        "hidden" if hidden else "—" if effective is None else f"{effective:.3f}",
        help="After reviews: an override, or the computed margin negated when flipped.",
    )
    # Short words: a metric's value is cut to its column's width.
    shown_state = {(False, False): "original", (True, False): "flipped"}
    shown_state |= {(False, True): "flagged", (True, True): "flip+flag"}
    m[4].metric(
        "State",
        "hidden" if hidden else shown_state[state.flipped, state.flagged],
        help="original: as imported; flipped: chosen and rejected swapped in exports; "
        "flagged: marked for a second look (left out of exports by default).",
    )

    texts = (pair.prompt, pair.chosen, pair.rejected)
    box = (
        320 if max(len(t) for t in texts) > 600 or max(t.count("\n") for t in texts) > 12 else None
    )
    cols = st.columns(3)
    for col, title, text in zip(
        cols,
        ("Prompt", "Chosen (as imported)", "Rejected (as imported)"),
        texts,
        strict=True,
    ):
        with col:
            st.caption(title)
            ui.plain(text, height=box)
    if state.flipped and not hidden:
        st.caption("Flipped: the export swaps chosen and rejected and negates the margin.")

    disabled = not ui.annotator()
    st.text_input("Note (optional, stored with the next action)", key=f"note_{current}")
    with st.container(horizontal=True, vertical_alignment="bottom"):
        st.button(
            "Accept",
            shortcut="A",
            type="primary",
            disabled=disabled,
            on_click=act,
            args=(current, "accept", next_id),
        )
        st.button(
            "Flip", shortcut="F", disabled=disabled, on_click=act, args=(current, "flip", next_id)
        )
        flag = "unflag" if state.flagged else "flag"
        st.button(
            flag.capitalize(),
            shortcut="G",
            disabled=disabled,
            on_click=act,
            args=(current, flag, next_id),
        )
        st.number_input(
            "New margin",
            value=float(value if hidden or effective is None else effective),
            step=0.1,
            format="%.4f",
            key=f"override_{current}",
            width=200,
        )
        st.button(
            "Override",
            shortcut="O",
            disabled=disabled,
            on_click=act,
            args=(current, "override", next_id),
        )
    if "review_error" in st.session_state:
        ui.plain_error("Not saved.", st.session_state.pop("review_error"))
    if "review_done" in st.session_state:
        st.toast(st.session_state.pop("review_done"), icon=":material/check:")

    if hidden:
        history = []
        st.caption("Blind review: others' reviews of this pair show once you have reviewed it.")
    st.caption("History of this pair (every annotator, every run)")
    if history:
        st.dataframe(
            pd.DataFrame(
                [(h.created_at, h.annotator, h.action, h.value, h.note, h.run_id) for h in history],
                columns=["when", "annotator", "action", "value", "note", "run"],
            ),
            hide_index=True,
        )
    else:
        st.text("No reviews yet.")


review_pane()

with st.expander("Agreement between annotators"):
    from legend_core.agreement import agreement_frame, pairwise_agreement

    if ui.seen_by() is not None:
        st.caption("Blind review is on: agreement is for admins.")
        st.stop()
    table = agreement_frame(pairwise_agreement(s.reviews_frame(run.dataset_id)))
    if table.empty:
        st.caption("Shows once two annotators have reviewed the same pairs.")
    else:
        st.caption(
            "Per pair of annotators, on the pairs both reviewed: agreement and Cohen's kappa "
            "on flips and flags; correlation and mean absolute difference of overrides."
        )
        st.dataframe(table, hide_index=True)
