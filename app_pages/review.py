"""Review: the pairs the direction disagrees with first; verdicts (accept, flip, override,
withdraw), flags and notes, resolved by the policy of ``legend_core.review.policy``."""

import pandas as pd
import streamlit as st

from app_pages import _common as ui
from legend_core import config
from legend_core.app import views
from legend_core.app.queue import list_step, ordered_queue
from legend_core.data.store import QueueStep
from legend_core.review.policy import POLICY_POINTS, AnnotatorState

st.title("Review")
others = (
    "others' reviews of a pair show once you have given your verdict on it (blind review)"
    if ui.seen_by() is not None
    else "reviews by others show up as soon as they are made"
)
st.caption(
    "The queue puts first the pairs with the most negative margins (the direction disagrees "
    "with the label), then those near zero; or, by choice, the pairs it is least sure of. "
    "Pairs are shown as imported; every verdict is "
    f"about the pair as shown and is stored with your name; {others}. Keys: A accept · "
    "F flip · O override · W withdraw · G flag · N next · P previous · U next unreviewed."
)
with st.expander("How verdicts add up"):
    # Our own text (legend_core.review.policy), not data: markdown is safe here.
    st.markdown("\n".join(f"- {point}" for point in POLICY_POINTS))
s = ui.store()
url = config.database_url()
run = ui.pick_run(s, "review")
if run is None:
    ui.empty(
        "No margins to review yet: compute them first.",
        "app_pages/explore.py",
        "Annotate and explore",
    )
    st.stop()

if not ui.annotator():
    st.warning("Enter your name in the sidebar to review.", icon=":material/person:")

admins = ui.admins()  # their verdicts adjudicate (login mode)
selection = st.session_state.get("review_selection") or {}
# A selection holds pair ids: it fits every run of the data set it was made on.
selected_run = selection.get("run_id")
has_selection = bool(selection.get("pair_ids")) and (
    selected_run == run.id or selected_run in {r.id for r in s.list_runs(run.dataset_id)}
)
# Disputed pairs are a queue of their own, except under blind review (it would tell which
# pairs others reviewed, and how).
disputed = []
if ui.seen_by() is None:
    disputed = [p for p, r in s.resolutions(run.id, admins).items() if r.disputed]
sources = ["all"] + (["selection"] if has_selection else []) + (["disputed"] if disputed else [])
if st.session_state.get("review_source") not in sources:
    st.session_state["review_source"] = "all"
st.radio(
    "Queue",
    sources,
    key="review_source",
    horizontal=True,
    format_func={
        "all": "All pairs",
        "selection": f"Your selection ({len(selection.get('pair_ids', [])):,} pairs)",
        "disputed": f"Disputed ({len(disputed):,} pairs: verdicts split evenly)",
    }.get,
)
#: Queue orders (Store.review_queue): the direction's disagreements with the label first, or
#: the pairs it is least sure of (smallest |margin|, either side) first: a verdict there
#: teaches a direction learned from reviews the most (Direction lab, "Learn from labels").
ORDERS = {
    "disagreement": "Disagreement first (most negative margin first)",
    "least_sure": "Least sure first (smallest |margin| first)",
}
st.radio(
    "Order",
    list(ORDERS),
    key="review_order",
    horizontal=True,
    format_func=ORDERS.get,
)


@st.cache_data(show_spinner=False, max_entries=4)
def computed(db: str, run_id: int, n_margins: int) -> pd.Series:
    """The run's computed margins by pair id (they never change once computed), smallest
    first: the percentile of each step then sorts an array already in order."""
    frame = ui.store().run_frame(run_id)
    return frame.set_index("pair_id")["computed_margin"].sort_values(kind="stable")


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
    if action != "withdraw" and st.session_state.get("review_advance", True):
        if following is not None:
            st.session_state["review_current"] = following


def go(pair_id: int | None) -> None:
    if pair_id is not None:
        st.session_state["review_current"] = pair_id


#: The label in one short word, with the flag (a metric's value is cut to its column's width).
FLAGGED_WORDS = {"original": "flagged", "flipped": "flip+flag", "disputed": "disputed+flag"}


def label_word(flipped: bool, disputed: bool, flagged: bool) -> str:
    """original / flipped / disputed, or with the flag: flagged / flip+flag / disputed+flag."""
    word = "disputed" if disputed else "flipped" if flipped else "original"
    return FLAGGED_WORDS[word] if flagged else word


def where(
    current: int | None, ids: list[int] | None, order: str, seen_by: str | None
) -> QueueStep | None:
    """Where ``current`` stands in the queue shown (``ids``: a listed queue, else the run's
    whole queue); reviews are read from the database now, whoever made them."""
    if ids is None:
        # The whole run: the store steps by keys (a few index rows), never lists 100k ids.
        return s.queue_step(run.id, order, current, annotator=seen_by)
    queue = ordered_queue(s, run.id, order, ids, run.n_margins, st.session_state)
    return list_step(s, run.id, queue, current, annotator=seen_by)


def go_unreviewed(ids: list[int] | None, order: str, seen_by: str | None) -> None:
    """Button callback: the next unreviewed pair as of the click (another annotator may have
    reviewed the one that was next when the page was drawn)."""
    here = where(st.session_state.get("review_current"), ids, order, seen_by)
    go(None if here is None else here.next_unreviewed)


@st.fragment
def review_pane() -> None:
    """One pair at a time; its buttons rerun only this pane."""
    source = st.session_state["review_source"]
    if source == "selection":
        ids = selection.get("pair_ids")
    elif source == "disputed":
        ids = disputed
    else:
        ids = None
    order = st.session_state.get("review_order", "disagreement")
    # Under blind review, counts and "next unreviewed" are this annotator's own: others'
    # progress would tell which pairs they reviewed. "Reviewed" means holding a verdict.
    seen_by = ui.seen_by()
    here = where(st.session_state.get("review_current"), ids, order, seen_by)
    if here is None:
        st.info("This queue is empty.", icon=":material/info:")
        return
    current, pos = here.current, here.position
    st.session_state["review_current"] = current
    # Read with the step when stepping the whole run (one look at the reviews for both).
    reviewed, remaining = here.counts or s.review_counts(run.id, annotator=seen_by)
    total = max(1, reviewed + remaining)
    by = " by you" if seen_by is not None else ""
    st.progress(reviewed / total, text=f"{reviewed:,} reviewed{by} · {remaining:,} remaining")

    next_id = here.next
    with st.container(horizontal=True, vertical_alignment="center"):
        st.button("Previous", shortcut="P", on_click=go, args=(here.previous,), disabled=pos == 0)
        st.button("Next", shortcut="N", on_click=go, args=(next_id,), disabled=next_id is None)
        st.button(
            "Next unreviewed",
            shortcut="U",
            on_click=go_unreviewed,
            args=(ids, order, seen_by),
            disabled=here.next_unreviewed is None,
        )
        st.toggle("Go to the next pair after each action", value=True, key="review_advance")

    pair = s.get_pair(current)
    me = ui.annotator()
    mine = s.annotator_state(current, me) if me else AnnotatorState("")
    # Blind review: everything about others' reviews (their verdicts, flags, the labels of
    # the buttons, history) stays hidden until this annotator has given a verdict.
    hidden = seen_by is not None and mine.verdict is None
    state = s.pair_state(current, run.id, admins=admins, annotator=seen_by if hidden else None)
    margins = computed(url, run.id, run.n_margins)
    value = float(margins.get(current, float("nan")))
    shown = state.shown_margin
    m = st.columns(6)
    m[0].metric("Pair", f"{pos + 1:,} of {here.size:,}", help=f"Pair id {current}")
    m[1].metric("Computed margin", f"{value:.3f}")
    m[2].metric("Percentile", f"{views.percentile_of(margins.to_numpy(), value):.0f}")
    m[3].metric(
        "Reviewed margin",
        "hidden" if hidden else "—" if shown is None else f"{shown:.3f}",
        help="After everyone's verdicts, in the orientation shown (as imported): an "
        "override, else the computed margin. Exports write it relative to the exported "
        "chosen response: negated when the label is flipped.",
    )
    m[4].metric(
        "Label",
        "hidden" if hidden else label_word(state.flipped, state.disputed, state.flagged),
        help="original: as imported; flipped: the export swaps chosen and rejected; "
        "disputed: annotators split evenly, left out of exports by default; flagged: "
        "someone asks for a second look (left out of exports by default).",
    )
    m[5].metric(
        "Your verdict",
        mine.describe() if me else "—",
        help="Your latest verdict on this pair (none, or withdrawn: none).",
    )
    if not hidden and state.n_verdicts:
        names = ", ".join(state.decided_by) or "nobody"
        st.caption(
            f"Label from: {state.label_source} · decided by {names} · "
            f"{state.n_verdicts:,} verdict{'s' if state.n_verdicts != 1 else ''}."
        )
    if not hidden and state.disputed:
        st.warning(
            "Disputed: the annotators' verdicts are split evenly. Left out of exports unless "
            "asked for; an admin's verdict decides.",
            icon=":material/balance:",
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
        st.caption(
            "Flipped: the export swaps chosen and rejected and writes the margin relative to "
            "the exported chosen (negated)."
        )

    disabled = not me
    st.text_input("Note (optional, stored with the next action)", key=f"note_{current}")
    with st.container(horizontal=True, vertical_alignment="bottom"):
        st.button(
            "Accept",
            shortcut="A",
            type="primary",
            disabled=disabled,
            on_click=act,
            args=(current, "accept", next_id),
            help="The chosen response shown is the safer one; the computed margin stands.",
        )
        st.button(
            "Flip",
            shortcut="F",
            disabled=disabled,
            on_click=act,
            args=(current, "flip", next_id),
            help="The rejected response shown is the safer one (pressing it again changes "
            "nothing).",
        )
        # The button sets this annotator's own flag, so it is labelled from their own flag
        # alone: labelled from everyone's, "Unflag" would reveal someone else's flag.
        flag = "unflag" if mine.flagged else "flag"
        st.button(
            flag.capitalize(),
            shortcut="G",
            disabled=disabled,
            on_click=act,
            args=(current, flag, next_id),
            help="Your flag asks for a second look (flagged pairs are left out of exports "
            "by default); it is apart from your verdict.",
        )
        st.number_input(
            "New margin (as shown)",
            value=float(value if hidden or shown is None else shown),
            step=0.1,
            format="%.4f",
            key=f"override_{current}",
            width=200,
            help="Positive: the chosen response shown is safer; negative: the rejected one.",
        )
        st.button(
            "Override",
            shortcut="O",
            disabled=disabled,
            on_click=act,
            args=(current, "override", next_id),
        )
        st.button(
            "Withdraw",
            shortcut="W",
            disabled=disabled or mine.verdict is None,
            on_click=act,
            args=(current, "withdraw", next_id),
            help="Take your verdict on this pair back (your flag stays as it is).",
        )
    if "review_error" in st.session_state:
        ui.plain_error("Not saved.", st.session_state.pop("review_error"))
    if "review_done" in st.session_state:
        st.toast(st.session_state.pop("review_done"), icon=":material/check:")

    history = s.pair_history(current)
    if hidden:
        history = [h for h in history if h.annotator == me]
        st.caption(
            "Blind review: others' reviews of this pair show once you have given your verdict."
        )
        st.caption("Your reviews of this pair")
    else:
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
    from legend_core.review.annotators import agreement_frame, pairwise_agreement

    if ui.seen_by() is not None:
        st.caption("Blind review is on: agreement is for admins.")
        st.stop()
    table = agreement_frame(pairwise_agreement(s.reviews_frame(run.dataset_id)))
    if table.empty:
        st.caption("Shows once two annotators have reviewed the same pairs.")
    else:
        st.caption(
            "Per pair of annotators, on the pairs both reviewed: agreement and Cohen's kappa "
            "of their current verdicts (as imported or swapped) and of their flags; "
            "correlation and mean absolute difference of overrides made on the same "
            "direction's scale."
        )
        st.dataframe(table, hide_index=True)
