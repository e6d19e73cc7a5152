"""Export: a margin run as a TRL-ready file (reviews applied) with its manifest."""

import json

import streamlit as st

from app_pages import _common as ui
from legend_core import config
from legend_core.app import downloads, views
from legend_core.data import exports

st.title("Export")
st.caption(
    "Every row has prompt, chosen, rejected and a float margin, the columns TRL's "
    "RewardTrainer reads. Reviews are applied as the Review page's policy resolves them: "
    "pairs whose label is flipped are swapped, and the margin is written relative to the "
    "exported chosen response (negated when swapped); overrides set the margin; disputed "
    "pairs and pairs without a margin are left out."
)
s = ui.store()
run = ui.pick_run(s, "export")
if run is None:
    ui.empty(
        "Nothing to export yet: compute margins first.",
        "app_pages/explore.py",
        "Annotate and explore",
    )
    st.stop()

if ui.blind_for_me():
    ui.empty("Blind review is on: exports apply everyone's reviews, so they are for admins.")
    st.stop()

admins = tuple(sorted(ui.admins()))  # their verdicts adjudicate (login mode)
reviewed, remaining = s.review_counts(run.id)
n_disputed = sum(r.disputed for r in s.resolutions(run.id, admins).values())
st.caption(
    f"Run #{run.id}: {run.n_margins:,} of {run.n_pairs:,} pairs have a margin; "
    f"{reviewed:,} reviewed (someone holds a verdict), {n_disputed:,} disputed. Reviews "
    "made on every run of this data set and direction count."
)

left, right = st.columns(2)
with left:
    st.subheader("Rows")
    reviewed_only = st.checkbox("Reviewed pairs only", key="export_reviewed")
    exclude_flagged = st.checkbox(
        "Leave out flagged pairs", value=config.DEFAULT_EXCLUDE_FLAGGED, key="export_flagged"
    )
    include_disputed = st.checkbox(
        "Keep disputed pairs",
        key="export_disputed",
        help="Pairs whose annotators are split evenly (no admin verdict): left out by "
        "default; kept, they are exported as imported with the computed margin and marked "
        "in the provenance column 'disputed'.",
    )
    # The range is in the margins' own units (before scaling), over every pair.
    everything = exports.export_frame(
        s, run.id, exclude_flagged=False, scale="none", include_disputed=True, admins=admins
    )
    lo, hi = views.finite_range(everything["margin"])
    fmt, step = views.slider_format(lo, hi)
    span = st.slider("Margin range", lo, hi, (lo, hi), step, fmt, key=f"export_range_{run.id}")
with right:
    st.subheader("File")
    fmt = st.selectbox("Format", exports.EXPORT_FORMATS, format_func=str.upper, key="export_format")
    scale = ui.scale_choice(
        st,
        "export_scale",
        "default",
        "TRL subtracts the margin inside its loss, −log σ(r_c − r_r − margin), so its "
        "size matters; the scale is computed over the rows exported and written in the "
        "manifest. ",
        ". The default was chosen by the reward-model check in EVALUATION.md.",
    )
    bins = config.DEFAULT_MARGIN_BINS
    if scale == "bins":
        bins = st.number_input(
            "Levels of |margin|",
            min_value=2,
            max_value=100,
            value=config.DEFAULT_MARGIN_BINS,
            step=1,
            key="export_bins",
            help="Each margin becomes sign × its quantile bin of |margin|, 0..levels−1.",
        )
    provenance = st.checkbox(
        "Provenance columns",
        help="pair_id, direction_id, model, layer, computed and reviewed margins (relative "
        "to the exported chosen), label_source (admin, unanimous, majority, single, "
        "disputed or none), decided_by, n_verdicts, disputed, flagged, flipped. Not for "
        "training; for audits.",
        key="export_provenance",
    )

filters = {
    "reviewed_only": reviewed_only,
    "exclude_flagged": exclude_flagged,
    "margin_range": None if span == (lo, hi) else span,
    "scale": scale,
    "bins": int(bins) if scale == "bins" else None,
    "provenance": provenance,
    "include_disputed": include_disputed,
    "admins": admins,
}
try:
    preview = exports.export_frame(s, run.id, **filters)
except ValueError as error:
    ui.plain_error("These settings do not work.", str(error))
    st.stop()

st.subheader("Preview")
st.caption(f"{len(preview):,} rows; the first 20:")
first = ["margin", "prompt", "chosen", "rejected"]
st.dataframe(
    preview.head(20),
    hide_index=True,
    column_order=first + [c for c in preview.columns if c not in first],
    column_config={"margin": st.column_config.NumberColumn(format="%.4f")},
)

signature = json.dumps([run.id, fmt, filters], default=str)
if st.button(
    f"Export {len(preview):,} rows",
    type="primary",
    disabled=preview.empty,
    icon=":material/file_export:",
):
    dataset = s.get_dataset(run.dataset_id)
    st.session_state["export"] = (
        signature,
        downloads.export_file(s, run.id, fmt, f"{dataset.name}-run{run.id}", **filters),
    )
done = st.session_state.get("export")
if done and done[0] == signature:
    result = done[1]
    row = st.container(horizontal=True)
    row.download_button(
        f"Download {fmt.upper()}",
        result.data,
        file_name=result.file_name,
        mime=result.mime,
        type="primary",
        icon=":material/download:",
        on_click="ignore",
    )
    row.download_button(
        "Download manifest (JSON)",
        result.manifest_bytes,
        file_name=f"{result.file_name}.manifest.json",
        mime="application/json",
        icon=":material/description:",
        on_click="ignore",
    )
    counts, margin = result.manifest["counts"], result.manifest["margin"]
    parameters = ", ".join(
        f"{k} {v:.4g}" for k, v in margin["parameters"].items() if isinstance(v, float)
    )
    st.caption(
        f"{counts['rows']:,} rows written: {counts['flipped']:,} flipped, "
        f"{counts['overridden']:,} overridden; margins on the {margin['scale']} scale"
        + (f" ({parameters})" if parameters else "")
        + ". The manifest records the run, the direction, the filters, the margin's scale "
        "and its parameters, what each filter left out, and the file's SHA-256."
    )
    with st.expander("Manifest (JSON)"):
        st.json(result.manifest, expanded=2)
elif done:
    st.caption("The settings changed since the last export: export again.")
