"""Export: a margin run as a TRL-ready file (reviews applied) with its manifest."""

import json

import streamlit as st

from legend_core import explore, exports
from pages import _common as ui

st.title("Export")
st.caption(
    "Every row has prompt, chosen, rejected and a float margin, the columns TRL's "
    "RewardTrainer reads. Reviews are applied: flipped pairs are swapped and their margin "
    "negated, overrides replace the margin, pairs without a margin are left out."
)
s = ui.store()
run = ui.pick_run(s, "export")
if run is None:
    ui.empty(
        "Nothing to export yet: compute margins first.",
        "pages/explore.py",
        "Annotate and explore",
    )
    st.stop()

if ui.blind_for_me():
    ui.empty("Blind review is on: exports apply everyone's reviews, so they are for admins.")
    st.stop()

reviewed, remaining = s.review_counts(run.id)
st.caption(
    f"Run #{run.id}: {run.n_margins:,} of {run.n_pairs:,} pairs have a margin; "
    f"{reviewed:,} reviewed."
)

left, right = st.columns(2)
with left:
    st.subheader("Rows")
    reviewed_only = st.checkbox("Reviewed pairs only", key="export_reviewed")
    exclude_flagged = st.checkbox("Leave out flagged pairs", value=True, key="export_flagged")
    everything = exports.export_frame(s, run.id)
    lo, hi = explore.finite_range(everything["margin"])
    fmt, step = explore.slider_format(lo, hi)
    span = st.slider("Margin range", lo, hi, (lo, hi), step, fmt, key=f"export_range_{run.id}")
with right:
    st.subheader("File")
    fmt = st.selectbox("Format", exports.EXPORT_FORMATS, format_func=str.upper, key="export_format")
    bins = st.number_input(
        "Quantile bins (0: keep the continuous margin)",
        min_value=0,
        max_value=100,
        value=0,
        step=1,
        help="The paper's discrete release: each margin becomes its bin index 0..bins-1.",
    )
    provenance = st.checkbox(
        "Provenance columns",
        help="pair_id, direction_id, model, layer, computed and reviewed margins, annotator, "
        "flagged, flipped. Not for training; for audits.",
        key="export_provenance",
    )

filters = {
    "reviewed_only": reviewed_only,
    "exclude_flagged": exclude_flagged,
    "margin_range": None if span == (lo, hi) else span,
    "bins": int(bins) if bins >= 2 else None,
    "provenance": provenance,
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
        explore.export_file(s, run.id, fmt, f"{dataset.name}-run{run.id}", **filters),
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
    counts = result.manifest["counts"]
    st.caption(
        f"{counts['rows']:,} rows written: {counts['flipped']:,} flipped, "
        f"{counts['overridden']:,} overridden. The manifest records the run, the direction, "
        "the filters, what each filter left out, and the file's SHA-256."
    )
    with st.expander("Manifest (JSON)"):
        st.json(result.manifest, expanded=2)
elif done:
    st.caption("The settings changed since the last export: export again.")
