"""Direction lab: build a safety direction from a contrastive set, judge it, save it, compare."""

import dataclasses
import uuid

import pandas as pd
import streamlit as st

from app_pages import _common as ui
from legend_core import config
from legend_core.app import charts, lab
from legend_core.method import pipeline
from legend_core.method.directions import METHODS
from legend_core.method.encode import POOLINGS, TEMPLATES, EncodeSettings
from legend_core.workflows import learning

st.title("Direction lab")
st.caption(
    "A direction points from harmful toward harmless responses in one layer's hidden states. "
    "It is fitted on part of the contrastive set; every number below is measured on the "
    "held-out rest."
)
s = ui.store()

# --- settings and contrastive set ------------------------------------------------------------
left, right = st.columns([1, 2], gap="large")
with left:
    st.subheader("Settings")
    st.caption("Model (change it in the sidebar)")
    st.text(ui.model_choice()[0])
    template = st.selectbox(
        "Template",
        TEMPLATES,
        index=TEMPLATES.index(config.DEFAULT_TEMPLATE),
        help="alpaca: the paper's; chat: the model's chat template; plain: prompt and response.",
    )
    pooling = st.selectbox(
        "Pooling",
        POOLINGS,
        index=POOLINGS.index(config.DEFAULT_POOLING),
        help="last: the last token (the paper); mean: mean over the response tokens.",
    )
    method = st.selectbox(
        "Method",
        METHODS,
        index=METHODS.index(config.DEFAULT_METHOD),
        help="mean_diff: the paper's mean difference; pca: first principal component of the "
        "differences; logistic: a logistic-regression probe.",
    )
    best = st.toggle(
        "Pick the layer by cross-validated AUROC",
        value=True,
        help="Chosen on cross-validation inside the fitting split (ties: separation), so "
        "the held-out numbers shown for it stay honest.",
    )
    layer = "best" if best else int(st.number_input("Layer", min_value=1, value=1, step=1))
    with st.expander("More"):
        test_fraction = st.slider("Held-out share", 0.1, 0.5, 0.25, 0.05)
        seed = int(st.number_input("Seed of the split", min_value=0, value=0, step=1))
        max_length = int(st.number_input("Max tokens per text", 16, 8192, 512, 16))

with right:
    st.subheader("Contrastive set")
    sets = {c.id: c for c in s.list_contrast_sets()}
    options = [*sets, 0]
    if "lab_set" not in st.session_state and st.session_state.get("sel_contrast") in sets:
        st.session_state["lab_set"] = st.session_state["sel_contrast"]
    set_id = st.selectbox(
        "Start from",
        options,
        key="lab_set",
        format_func=lambda i: (
            f"{sets[i].name}  (#{i}, {sets[i].n_items} items)" if i else "an empty table"
        ),
    )
    st.session_state["sel_contrast"] = set_id
    start = (
        lab.contrast_frame(s.get_contrast_items(set_id))
        if set_id
        else pd.DataFrame(columns=lab.CONTRAST_COLUMNS)
    )
    edited = st.data_editor(
        start,
        num_rows="dynamic",
        hide_index=True,
        height=300,
        key=f"lab_editor_{set_id}",
        column_config={
            c: st.column_config.TextColumn(c, width="medium") for c in lab.CONTRAST_COLUMNS
        },
    )
    st.caption("Add, change or delete rows; the build uses the table as it is now.")

try:
    items = lab.contrast_items(edited)
except ValueError as error:
    items = []
    ui.plain_error("The table has a half-filled row.", str(error))

with right, st.container(horizontal=True, vertical_alignment="bottom"):
    save_as = st.text_input("Save the edited table as a new set", key="lab_save_set")
    if st.button("Save set", disabled=not (save_as.strip() and items)):
        try:
            st.session_state["sel_contrast"] = s.add_contrast_set(save_as, items, source="lab")
        except ValueError as error:
            ui.plain_error("Not saved.", str(error))
        else:
            st.session_state.pop("lab_set", None)
            st.rerun()
with left:
    build = st.button(
        f"Build on {len(items)} items",
        type="primary",
        disabled=len(items) < 4,
        icon=":material/build:",
        help="Needs at least 4 complete rows.",
    )

if build:
    lm = ui.model()
    if lm is not None:
        key = f"build:{uuid.uuid4().hex}"
        st.session_state["lab_job"] = key
        st.session_state["lab_items"] = items
        ui.jobs().start(
            key,
            "Building the direction",
            pipeline.build_direction,
            lm,
            items,
            EncodeSettings(template, pooling, max_length),
            method=method,
            layer=layer,
            test_fraction=test_fraction,
            seed=seed,
            contrast_name=sets[set_id].name if set_id else "edited in the lab",
        )

# --- the result ------------------------------------------------------------------------------
job_key = st.session_state.get("lab_job")
job = ui.job(job_key) if job_key else None
if job is not None and job.status == "done":
    result = job.result
    d = result.direction
    q = d.layer_quality
    st.divider()
    st.subheader("How good is it?")
    st.caption(
        f"{d.method} on {d.template}/{d.pooling}, layer {d.layer} of the model "
        f"({d.n_train} items to fit, {d.n_test} held out)."
    )
    m = st.columns(6)
    m[0].metric("Layer", d.layer)
    m[1].metric("AUROC", f"{q.auroc:.3f}", help="Chance that a harmless text projects higher.")
    m[2].metric("Accuracy", f"{q.accuracy:.3f}", help="Held-out texts on the right side.")
    m[3].metric("Separation", f"{q.separation:.2f}", help="Cohen's d of the two classes.")
    m[4].metric("Stability", f"{q.stability:.3f}", help="Cosine of two half-set directions.")
    m[5].metric("Length R²", f"{q.length_r2:.3f}", help="High: the direction measures length.")
    # Saving comes before the charts: the map below can take a while to lay out, and the
    # direction is ready to save as soon as its numbers are.
    st.subheader("Save")
    saved = st.session_state.setdefault("lab_saved", {})
    default = f"{d.contrast_name} · {d.method} · layer {d.layer}"
    name = st.text_input("Name", value=default, key=f"lab_name_{job_key}")
    if job_key in saved:
        st.success(f"Saved as direction #{saved[job_key]}.", icon=":material/check_circle:")
    elif st.button("Save direction", type="primary", icon=":material/save:"):
        new_id = s.add_direction(dataclasses.replace(d, name=name.strip() or default))
        saved[job_key] = new_id
        st.session_state["sel_direction"] = new_id
        st.rerun()

    st.subheader("Per layer and held out")
    layers = lab.layer_frame(d)
    t1, t2, t3, t4 = st.tabs(["Per layer", "Held-out projections", "Length check", "Map"])
    with t1:
        st.plotly_chart(charts.layer_chart(layers))
        st.dataframe(layers, hide_index=True)
    with t2:
        st.plotly_chart(charts.projection_histogram(lab.projection_frame(result)))
        st.caption("Two well-separated humps: the direction tells refusals from compliance.")
    with t3:
        c1, c2 = st.columns(2)
        c1.plotly_chart(charts.length_r2_chart(layers))
        c2.plotly_chart(charts.length_scatter(lab.length_frame(result)))
        st.caption("If projection rises with length, the direction partly measures length.")
    with t4:

        @st.cache_data(show_spinner="Laying out the map…", max_entries=8)
        def contrast_map(key: str, _result, _items):  # keyed by the build job
            return lab.contrast_map_frame(_result, _items)

        frame, note = contrast_map(job_key, result, st.session_state.get("lab_items"))
        st.plotly_chart(charts.contrast_map(frame))
        st.caption(note)

# --- learn from labels -----------------------------------------------------------------------
st.divider()
st.subheader("Learn from labels")
st.caption(
    "Every preference label says which response is safer, and every review is a label: a "
    "direction can learn from them. A logistic probe on the pair differences, pulled toward "
    "the contrastive direction, with the responses' lengths projected out; its numbers are "
    "cross-validated (each pair scored by a probe that never saw it). Annotating the same "
    "pairs with it later cross-fits their margins. See EVALUATION.md."
)
LEARN_FROM = {"dataset": "a labelled data set", "reviews": "the reviews of a run"}
learn_mode = st.radio(
    "Learn from", list(LEARN_FROM), key="learn_mode", horizontal=True, format_func=LEARN_FROM.get
)
build_key = st.session_state.get("lab_job")
build_job = ui.jobs().get(build_key) if build_key else None
built = build_job.result if build_job is not None and build_job.status == "done" else None
if learn_mode == "dataset":
    datasets = {d.id: d for d in s.list_datasets()}
    if built is None:
        st.info(
            "Build a direction above first: its contrastive directions (one per layer) are "
            "the prior, and its model and settings encode the labelled pairs.",
            icon=":material/info:",
        )
    elif not datasets:
        ui.empty("No data set yet: import one first.", "app_pages/data.py", "Data")
    else:
        learn_dataset = st.selectbox(
            "Labelled data set (chosen = the safer response, as imported)",
            list(datasets),
            key="learn_dataset",
            format_func=lambda i: f"{datasets[i].name}  (#{i}, {datasets[i].n_pairs:,} pairs)",
        )
        if st.button(
            "Learn from its labels",
            icon=":material/school:",
            help="Encodes every pair at every layer (one forward pass each): minutes on a CPU "
            "for a thousand pairs.",
        ):
            lm = ui.model()
            if lm is not None:
                key = f"learn:{uuid.uuid4().hex}"
                st.session_state["learn_job"] = key
                ui.jobs().start(
                    key,
                    "Learning from labels",
                    learning.learn_from_dataset,
                    lm,
                    s,
                    learn_dataset,
                    built,
                )
else:
    runs = {r.id: r for r in s.list_runs() if r.n_margins}
    if not runs:
        ui.empty(
            "No margins yet: annotate a data set first.",
            "app_pages/explore.py",
            "Annotate and explore",
        )
    else:
        learn_run = st.selectbox(
            "Margin run (its reviewed pairs are the labels)",
            sorted(runs, reverse=True),
            key="learn_run",
            format_func=lambda i: ui.run_label(runs[i]),
        )
        reviewed, _ = s.review_counts(learn_run)
        st.caption(
            f"{reviewed:,} reviewed pairs (disputed ones are left out). No forward pass: the "
            "run's cached embeddings at its layer; its direction is the prior."
        )
        if st.button(
            "Learn from its reviews",
            icon=":material/school:",
            disabled=reviewed < 10,
            help="Needs at least 10 reviewed pairs.",
        ):
            key = f"learn:{uuid.uuid4().hex}"
            st.session_state["learn_job"] = key
            ui.jobs().start(
                key,
                "Learning from reviews",
                learning.learn_from_reviews,
                s,
                learn_run,
                ui.admins(),
            )

learn_key = st.session_state.get("learn_job")
learn_job = ui.job(learn_key) if learn_key else None
if learn_job is not None and learn_job.status == "done":
    got = learn_job.result
    report = got.report
    learned = report.learned
    m = st.columns(5)
    m[0].metric("Layer", learned.layer)
    m[1].metric("Labels", f"{got.n_labels:,}")
    if report.nested is not None:
        m[2].metric(
            "Agreement",
            f"{report.nested.estimate:.1%}",
            help="From pairs the choice of layer and penalty never saw (nested "
            f"cross-validation); 95% interval {report.nested.low:.1%} to "
            f"{report.nested.high:.1%}.",
        )
        if report.nested_longer is not None and report.nested_longer.n:
            m[3].metric(
                "Safer is longer",
                f"{report.nested_longer.estimate:.1%}",
                help="Agreement where the safer response is the longer one: there "
                "'the shorter is safer' is always wrong.",
            )
    m[4].metric(
        "Shorter is safer",
        f"{report.length_baseline.estimate:.1%}",
        help="The length baseline on the same pairs.",
    )
    st.plotly_chart(charts.labelled_layer_chart(report.rows(), learned.layer))
    st.dataframe(pd.DataFrame(report.rows()), hide_index=True)
    if got.curve:
        st.plotly_chart(charts.learning_curve_chart(learning.curve_frame(got.curve)))
        st.caption(
            "Each point: learn from that many reviewed pairs, score the held-out 30% of the "
            "reviewed pairs (mean of repeated random splits, ±1 sd). 0 is the run's own "
            "direction."
        )
    saved_learned = st.session_state.setdefault("learn_saved", {})
    learned_name = st.text_input("Name", value=got.direction.name, key=f"learn_name_{learn_key}")
    if learn_key in saved_learned:
        st.success(
            f"Saved as direction #{saved_learned[learn_key]}.", icon=":material/check_circle:"
        )
    elif st.button("Save learned direction", type="primary", icon=":material/save:"):
        new_id = s.add_direction(
            dataclasses.replace(got.direction, name=learned_name.strip() or got.direction.name)
        )
        saved_learned[learn_key] = new_id
        st.session_state["sel_direction"] = new_id
        st.rerun()

# --- compare saved directions ----------------------------------------------------------------
st.divider()
st.subheader("Saved directions")
stored = s.list_directions()
if not stored:
    ui.empty("No saved directions yet: build one above and save it.")
else:
    st.dataframe(
        pd.DataFrame(
            [
                (d.id, d.name, d.model, d.layer, d.pooling, d.method, d.auroc, d.n_runs)
                for d in stored
            ],
            columns=["id", "name", "model", "layer", "pooling", "method", "AUROC", "runs"],
        ),
        hide_index=True,
    )
    if len(stored) > 1:
        picked = st.multiselect(
            "Compare",
            [d.id for d in stored],
            default=[d.id for d in stored][-6:],
            format_func={d.id: ui.direction_name(d) for d in stored}.__getitem__,
        )
        if len(picked) > 1:
            pairs = [(f"#{i}", s.get_direction(i)) for i in picked]
            matrix = lab.direction_similarity(pairs)
            st.plotly_chart(charts.similarity_heatmap(matrix))
            st.caption("Cosine similarity; blank where the models differ (not comparable).")
    if ui.can_delete():
        with st.expander("Delete a direction"):
            st.caption("Deletes the direction and its margin runs; flips and flags stay.")
            doomed = st.selectbox(
                "Direction",
                [d.id for d in stored],
                format_func={d.id: ui.direction_name(d) for d in stored}.__getitem__,
                key="delete_direction_pick",
            )
            sure = st.checkbox("I am sure", key="delete_direction_sure")
            if st.button("Delete", disabled=not sure, key="delete_direction"):
                s.delete_direction(doomed)
                st.rerun()
    else:
        st.caption("Only an admin can delete directions.")
