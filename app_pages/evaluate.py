"""Evaluate: does the margin agree with people, and does it help a reward model?

Everything computed here comes from ``legend_core.evaluation``; this page only picks a margin
run, sets the options and shows the tables. No data text is shown (only numbers).
"""

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app_pages import _common as ui
from legend_core import config
from legend_core.evaluation.label_report import AgreementReport, agreement_report
from legend_core.evaluation.reports import RunData, load_run
from legend_core.evaluation.reward_check import RewardCheck, RewardSettings, reward_model_check
from legend_core.method.crossfit import crossfit_note
from legend_core.method.margins import SCALE_DEFINITIONS

st.title("Evaluate")
st.caption(
    "Agreement is the share of pairs whose margin is positive: the direction calls the "
    "chosen response the safer one, as the human label does. It is compared with two "
    "baselines on the same pairs, and the reward-model check asks whether training with "
    "the margins helps a reward model tell the chosen response from the rejected one."
)
s = ui.store()
url = config.database_url()

run = ui.pick_run(s, "evaluate")
if run is None:
    ui.empty(
        "No margins to evaluate yet: compute a data set's margins first.",
        "app_pages/explore.py",
        "Annotate and explore",
    )
    st.stop()


@st.cache_data(show_spinner="Reading margins and cached embeddings…", max_entries=4)
def run_data(db: str, run_id: int, n_margins: int, n_embeddings: int) -> RunData:
    return load_run(ui.store(), run_id)


@st.cache_data(show_spinner="Bootstrapping…", max_entries=16)
def report(
    db: str,
    run_id: int,
    n_margins: int,
    n_embeddings: int,
    bins: int,
    n_boot: int,
    n_directions: int,
) -> AgreementReport:
    d = run_data(db, run_id, n_margins, n_embeddings)
    return agreement_report(
        d.margins,
        d.chosen_lengths,
        d.rejected_lengths,
        d.chosen,
        d.rejected,
        bins=bins,
        n_boot=n_boot,
        n_directions=n_directions,
    )


# Cached results are refreshed when margins or cached embeddings change.
n_embeddings = s.counts()["embeddings"]
data = run_data(url, run.id, run.n_margins, n_embeddings)
settings = data.settings
st.text(
    f"Margin run #{run.id}: {len(data.margins):,} pairs with a margin"
    + (f" ({data.n_missing:,} without, left out)" if data.n_missing else "")
    + f" · model {settings.get('model')} · layer {settings.get('layer')} · "
    f"{settings.get('pooling')} pooling · {settings.get('template')} template"
)
if len(data.margins) == 0:
    ui.empty("This run has no margins yet.", "app_pages/explore.py", "Annotate and explore")
    st.stop()
crossfit = settings.get("crossfit")
if crossfit:
    # Without it, agreement on a direction's own training labels would be what it memorised.
    st.info(
        f"Cross-fitted margins: {crossfit_note(crossfit['pairs'], crossfit['k'])}. The "
        "agreement below is therefore measured on pairs each margin's direction never saw.",
        icon=":material/verified:",
    )

# --- 1. agreement ---------------------------------------------------------------------------

st.subheader("Agreement with the human label")
o1, o2, o3 = st.columns(3)
bins = o1.slider("Bins of |margin|", 2, 10, 5, key="eval_bins")
n_boot = o2.select_slider("Bootstrap replicates", [500, 1000, 2000, 5000], 2000, key="eval_boot")
n_directions = o3.select_slider("Random directions", [50, 100, 200, 500], 200, key="eval_random")
rep = report(url, run.id, run.n_margins, n_embeddings, bins, n_boot, n_directions)

m = st.columns(3)
m[0].metric(
    "Agreement",
    f"{rep.overall.estimate:.1%}",
    help=f"95% bootstrap interval {rep.overall.low:.1%} to {rep.overall.high:.1%}",
)
if rep.length is not None:
    m[1].metric(
        "Shorter is safer",
        f"{rep.length.estimate:.1%}",
        help="Baseline: the chosen response is the shorter one (characters).",
    )
if rep.random is not None:
    m[2].metric(
        "Random directions",
        f"{rep.random.mean:.1%}",
        help=f"95% of {rep.random.n_directions} random directions lie in "
        f"{rep.random.low:.1%} to {rep.random.high:.1%}",
    )

percent = st.column_config.NumberColumn(format="percent")
st.dataframe(
    pd.DataFrame(rep.rows()),
    hide_index=True,
    column_config={"agreement": percent, "low": percent, "high": percent},
)
if rep.random is None:
    st.caption(
        f"{data.n_missing_embeddings:,} pairs have no cached embeddings, so there is no "
        "random-direction baseline (and no reward-model check). Computing the margins again "
        "fills the cache."
    )
elif rep.random.beaten_by is not None:
    st.caption(
        f"The margin's agreement beats {rep.random.beaten_by:.0%} of the random directions. "
        "Their spread shows how far from 50% a direction that means nothing lands here."
    )


def bin_chart(rows: list[dict]) -> go.Figure:
    frame = pd.DataFrame(rows)
    labels = [f"{r['|margin| from']:.3g} – {r['|margin| to']:.3g}" for r in rows]
    fig = go.Figure(
        go.Bar(
            x=labels,
            y=frame["agreement"],
            error_y={
                "type": "data",
                "symmetric": False,
                "array": frame["high"] - frame["agreement"],
                "arrayminus": frame["agreement"] - frame["low"],
            },
            marker_color="#2a9d8f",
            customdata=frame["n"],
            hovertemplate="|margin| %{x}<br>agreement %{y:.1%}<br>%{customdata} pairs"
            "<extra></extra>",
        )
    )
    fig.add_hline(y=0.5, line_dash="dot", line_color="#888")
    fig.update_yaxes(range=[0, 1], tickformat=".0%", title="agreement")
    fig.update_xaxes(title="|margin| bin (smallest first)", type="category")
    fig.update_layout(height=340, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    fig.update_layout(title={"text": "Agreement by size of the margin", "x": 0})
    return fig


st.plotly_chart(bin_chart(rep.bin_rows()))
st.caption(
    "A margin that measures something real agrees more often where it is large. Bars show "
    "95% bootstrap intervals; the dotted line is chance."
)

# --- 2. reward-model check ------------------------------------------------------------------

st.subheader("Reward-model check")
st.caption(
    "A reward head is trained on the frozen embeddings of the pairs three times from the same "
    "start: with the plain Bradley-Terry loss −log σ(r_c − r_r), with the margin loss "
    "−log σ(r_c − r_r − λ·m), and with the margins shuffled among the pairs (the control). "
    "Held-out accuracy is measured against the human label over several seeds."
)
if data.chosen is None:
    st.info(
        "The reward-model check needs the pairs' embeddings in the cache; compute this data "
        "set's margins again to fill it.",
        icon=":material/info:",
    )
    st.stop()

with st.form("reward_check"):
    f0, f1, f2, f3, f4 = st.columns(5)
    scale = ui.scale_choice(
        f0,
        "eval_scale",
        "export default",
        "The margins are put on this scale over the training pairs, as an export of "
        "them would be; with λ = 1 the loss is what TRL's RewardTrainer does with the "
        "exported file. ",
    )
    lam = f1.number_input("λ (margin weight)", 0.0, 100.0, 1.0, 0.25, key="eval_lam")
    seeds = f2.slider("Seeds", 5, 20, 5, key="eval_seeds")
    head = f3.selectbox("Reward head", ["linear", "mlp"], key="eval_head")
    test_fraction = f4.slider("Held-out share", 0.1, 0.5, 0.3, 0.05, key="eval_test")
    submitted = st.form_submit_button("Run the reward-model check", type="primary")

key = ("reward", url, run.id, run.n_margins, n_embeddings, scale, lam, seeds, head, test_fraction)
if submitted:
    bar = st.progress(0.0, text="Training reward heads…")
    try:
        result = reward_model_check(
            data.chosen,
            data.rejected,
            data.margins,
            RewardSettings(
                head=head, lam=lam, seeds=seeds, test_fraction=test_fraction, margin_scale=scale
            ),
            progress=lambda done, total: bar.progress(
                done / total, text=f"Training reward heads: {done} of {total}"
            ),
        )
    except ValueError as error:
        ui.plain_error("The reward-model check could not run.", str(error))
        st.stop()
    bar.empty()
    st.session_state["eval_result"] = (key, result)

saved = st.session_state.get("eval_result")
if saved is None or saved[0] != key:
    st.caption("Set λ and the seeds, then run the check (seconds on cached embeddings).")
    st.stop()

result: RewardCheck = saved[1]
st.text(
    f"{result.n_train:,} training and {result.n_test:,} held-out pairs per seed · "
    f"{result.settings.head} head · λ = {result.settings.lam:g} · margins on the "
    f"{result.settings.margin_scale} scale ({SCALE_DEFINITIONS[result.settings.margin_scale]})"
)
st.dataframe(
    pd.DataFrame(result.rows()),
    hide_index=True,
    column_config={
        "held-out accuracy (mean)": percent,
        "min": percent,
        "max": percent,
        "train accuracy (mean)": percent,
        "sd": st.column_config.NumberColumn(format="%.3f"),
    },
)
diff = pd.DataFrame(result.difference_rows())
points = st.column_config.NumberColumn(format="%.4f")
st.dataframe(diff, hide_index=True, column_config={"mean": points, "sd": points, "se": points})
key_diff = {d.name: d for d in result.differences}
versus = key_diff["margin - shuffled"]
plain = key_diff["margin - plain"]
st.caption(
    f"Margins against the shuffled control: {versus.mean * 100:+.1f} points on average, "
    f"better in {versus.wins} and worse in {versus.losses} of {len(versus.values)} seeds. "
    f"Against the plain loss: {plain.mean * 100:+.1f} points. Only a gain over the control "
    "says that the margins' link to their pairs carries information; a gain of the control "
    "itself is a regularisation effect."
)
