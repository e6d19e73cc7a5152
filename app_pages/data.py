"""Data: import preference data sets and contrastive sets; see what is stored."""

from pathlib import Path

import pandas as pd
import streamlit as st

from app_pages import _common as ui
from legend_core import config
from legend_core.data import files, formats
from legend_core.data.uploads import save_upload

# .gz/.bz2/.xz are accepted alone (file pickers mishandle ".jsonl.gz"); the reader then
# checks the name before the compression suffix.
SUFFIXES = [suffix.lstrip(".") for suffix in files.READABLE_SUFFIXES]

st.title("Data")
s = ui.store()


def source(kind: str) -> Path | None:
    """An uploaded file (saved under its own name in a private folder) or, for an admin, a
    file of the server's data folder (nothing outside it: the box reads the server's disk)."""
    upload = st.file_uploader(f"Upload a {kind} file", type=SUFFIXES, key=f"{kind}_upload")
    path = ""
    if ui.is_admin():
        path = st.text_input(
            "…or the path of a file in the server's data folder",
            key=f"{kind}_path",
            placeholder="x.jsonl",
            help=f"Inside {config.data_dir()} (LEGEND_DATA_DIR), relative to it or absolute.",
        )
    if upload is not None:
        return save_upload(upload.file_id, upload.name, upload.getvalue())
    if path.strip():
        try:
            return config.data_file(path)
        except ValueError as error:
            ui.plain_error("This file cannot be read.", str(error))
    return None


@st.cache_resource(show_spinner="Reading the file…", max_entries=2)
def read(path: str, mtime: int, size: int, fmt: str, mapping: dict | None):
    """The file's pairs, read once per version of the file (kept as is, never changed)."""
    return formats.read_pairs(path, format=fmt, mapping=mapping)


pairs_tab, contrast_tab = st.tabs(["Preference pairs", "Contrastive sets"])

with pairs_tab:
    st.caption(
        "JSONL, JSON, CSV, TSV (each also as .gz, .bz2 or .xz) or Parquet: TRL (prompt, "
        "chosen, rejected, also conversational), HH-RLHF dialogues or PKU-SafeRLHF. The "
        "format is detected; a file with a problem is refused whole, with the line and field "
        "at fault."
    )
    left, right = st.columns([3, 2])
    with left:
        path = source("pairs")
    with right:
        fmt = st.selectbox("Format", ["auto", *formats.PAIR_FORMATS], key="pairs_format")
        with st.expander("Column names (for other layouts)"):
            st.caption("Leave empty to use the format's own names.")
            mapping = {
                field: st.text_input(field, key=f"map_{field}").strip()
                for field in ("prompt", "chosen", "rejected")
            }
    mapping = {k: v for k, v in mapping.items() if v} or None
    if path is not None:
        try:
            stat = path.stat()
            report = read(str(path), stat.st_mtime_ns, stat.st_size, fmt, mapping)
        except (formats.FormatError, ValueError, OSError) as error:
            ui.plain_error("This file cannot be imported.", str(error))
        else:
            st.success(
                f"Detected format: {report.format} · {report.rows_read:,} pairs · "
                f"{len(report.warnings):,} warnings · {len(report.duplicates):,} duplicates",
                icon=":material/check_circle:",
            )
            preview = formats.pairs_to_frame(report.pairs[:20])
            st.dataframe(preview, hide_index=True, height=260)
            if report.warnings:
                with st.expander("Warnings (pairs are kept)"):
                    st.dataframe(pd.DataFrame({"warning": report.warnings[:500]}), hide_index=True)
            name = st.text_input(
                "Name of the data set", value=files.data_file_stem(path), key=f"pairs_name_{path}"
            )
            if st.button("Import", type="primary", key="pairs_import", icon=":material/upload:"):
                try:
                    new_id = s.add_dataset(
                        name, report.pairs, source=path.name, format=report.format
                    )
                except ValueError as error:
                    ui.plain_error("Not imported.", str(error))
                else:
                    st.session_state["sel_dataset"] = new_id
                    st.session_state.pop("data_dataset", None)  # the picker below follows
                    st.toast(f"Imported {report.rows_read:,} pairs as data set #{new_id}.")

    st.subheader("Data sets")
    datasets = s.list_datasets()
    if not datasets:
        ui.empty("No data sets yet: upload one above, or load the demo on Home.")
    else:
        table = pd.DataFrame(
            [
                (d.id, d.name, d.format, d.n_pairs, d.n_runs, d.n_reviewed, d.created_at)
                for d in datasets
            ],
            columns=["id", "name", "format", "pairs", "margin runs", "reviewed", "created"],
        )
        if ui.seen_by() is not None:  # blind review: others' progress is not shown
            table = table.drop(columns=["reviewed"])
        st.dataframe(table, hide_index=True)
        chosen = ui.pick_dataset(s, "data")
        if chosen is not None:
            st.caption("First 100 pairs")
            frame = s.dataset_frame(chosen.id).head(100)
            st.dataframe(frame.drop(columns=["meta"]), hide_index=True, height=260)
            if ui.can_delete():
                with st.expander("Delete this data set"):
                    st.caption("Deletes its pairs, margin runs and reviews. There is no undo.")
                    sure = st.checkbox("I am sure", key="delete_sure")
                    if st.button("Delete", disabled=not sure, key="delete_dataset"):
                        s.delete_dataset(chosen.id)
                        st.session_state.pop("sel_dataset", None)
                        st.rerun()
            else:
                st.caption("Only an admin can delete data sets.")

with contrast_tab:
    st.caption(
        "A contrastive set: instruction, harmful, harmless (CSV or JSONL); or AdvBench "
        "(goal, target), whose harmless side is a refusal you choose."
    )
    left, right = st.columns([3, 2])
    with left:
        cpath = source("contrast")
    with right:
        cfmt = st.selectbox("Format", ["auto", *formats.CONTRAST_FORMATS], key="contrast_format")
        kind = st.radio(
            "Refusals (AdvBench only)",
            ["varied", "paper", "custom"],
            format_func={
                "varied": f"Ours, varied ({len(config.VARIED_REFUSALS)}, in turn; best measured)",
                "paper": f"The paper's: {config.PAPER_REFUSAL}",
                "custom": "My own",
            }.get,
            key="contrast_refusal_kind",
        )
        refusal = config.refusals(kind)
        if kind == "custom":
            refusal = st.text_input("Refusal", key="contrast_refusal")
    if cpath is not None:
        cname = st.text_input(
            "Name of the contrastive set",
            value=files.data_file_stem(cpath),
            key=f"contrast_name_{cpath}",
        )
        if st.button("Import contrastive set", type="primary", key="contrast_import"):
            try:
                set_id = s.import_contrast_file(cpath, format=cfmt, name=cname, refusal=refusal)
            except (formats.FormatError, ValueError, OSError) as error:
                ui.plain_error("This file cannot be imported.", str(error))
            else:
                st.session_state["sel_contrast"] = set_id
                st.toast(f"Imported contrastive set #{set_id}.")
    sets = s.list_contrast_sets()
    if not sets:
        ui.empty("No contrastive sets yet: import one above, or load the demo on Home.")
    else:
        st.dataframe(
            pd.DataFrame(
                [(c.id, c.name, c.n_items, c.source, c.created_at) for c in sets],
                columns=["id", "name", "items", "source", "created"],
            ),
            hide_index=True,
        )
