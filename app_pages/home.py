"""Home: what the app does, what the database holds, and the demo in one click."""

import streamlit as st

from app_pages import _common as ui
from legend_core.workflows import demo

st.title("Legend Studio")
st.markdown(
    "Legend Studio finds a **safety direction** in a language model's hidden states from "
    "contrastive examples: a harmful response and a refusal to the same request. "
    "It projects every preference pair on that direction to give it a **safety margin**, "
    "how much safer the chosen response is than the rejected one. "
    "Reviewers then check the pairs the direction disagrees with, and the reviewed margins "
    "are exported as a data set that TRL's `RewardTrainer` takes as it is."
)

s = ui.store()
counts = s.counts()
cols = st.columns(4)
cols[0].metric("Data sets", counts["datasets"], help=f"{counts['pairs']:,} pairs in all")
cols[1].metric("Directions", counts["directions"])
cols[2].metric("Margin runs", counts["runs"], help=f"{counts['margins']:,} margins in all")
if ui.seen_by() is None:
    cols[3].metric("Reviews", counts["reviews"])
else:  # blind review: how much others reviewed is not shown either
    cols[3].metric("Reviews", "hidden", help="Blind review is on.")
st.caption(
    f"{counts['pairs']:,} pairs · {counts['contrast_sets']} contrastive sets "
    f"({counts['contrast_items']:,} items) · {counts['embeddings']:,} cached embeddings"
)

name, device, dtype, _ = ui.model_choice()
st.subheader("Model")
st.text(name if name != "default" else "default: SmolLM2-135M-Instruct (bundled, offline)")
change = "Change it in the sidebar." if ui.is_admin() else "An admin chooses it."
st.caption(f"Device {device}, data type {dtype}. {change}")

st.subheader("Start")
if counts["datasets"] == 0 and counts["contrast_sets"] == 0:
    st.write(
        "The database is empty. The demo holds 52 preference pairs and a contrastive set of "
        "80 requests, each with a harmful answer and a refusal, all written for this project."
    )
    if st.button("Load the demo", type="primary", icon=":material/play_arrow:"):
        ids = demo.load_demo(s)
        st.session_state["sel_dataset"] = ids.dataset_id
        st.session_state["sel_contrast"] = ids.contrast_set_id
        st.rerun()
else:
    st.markdown(
        "1. **Data**: import preference pairs and contrastive sets.\n"
        "2. **Direction lab**: build a safety direction and judge it per layer.\n"
        "3. **Annotate and explore**: compute margins, look at the map, pick pairs.\n"
        "4. **Review**: check the pairs the direction disagrees with first.\n"
        "5. **Export**: download a TRL-ready file with its manifest."
    )
    step = (
        ("app_pages/directions.py", "Build a direction")
        if counts["directions"] == 0
        else ("app_pages/explore.py", "Compute margins")
        if counts["runs"] == 0
        else ("app_pages/review.py", "Review pairs")
    )
    st.page_link(step[0], label=f"Next: {step[1]}", icon=":material/arrow_forward:")
