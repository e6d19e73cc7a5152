"""What every page shares: the cached store, model and job registry, the sidebar, pickers,
and the only ways data text is put on screen (plain text, never markdown or HTML)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import streamlit as st

from legend_core import auth, config
from legend_core.jobs import Job, JobRegistry
from legend_core.store import DatasetInfo, DirectionInfo, RunInfo, Store

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")


# --- loaded once per process -----------------------------------------------------------------


@st.cache_resource(show_spinner=False)
def _store(url: str) -> Store:
    return Store(url)


def store() -> Store:
    """The database at ``LEGEND_DB`` (opened and migrated once per process)."""
    return _store(config.database_url())


@st.cache_resource(show_spinner=False)
def jobs() -> JobRegistry:
    """Background jobs of this process (they outlive page switches and sessions)."""
    return JobRegistry()


@st.cache_resource(show_spinner=False)
def _loaded() -> dict[tuple[str, str, str, bool], str]:
    return {}


@st.cache_resource(show_spinner=False, max_entries=2)
def _model(name: str, device: str, dtype: str, trust_remote_code: bool) -> Any:
    from legend_core.models import load_model

    lm = load_model(name, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    _loaded()[(name, device, dtype, trust_remote_code)] = lm.label
    return lm


def model_choice() -> tuple[str, str, str, bool]:
    """(name, device, dtype, trust_remote_code) as chosen in the sidebar."""
    s = st.session_state
    name = (s.get("model_name") or "").strip() or config.model_name()
    return (
        name,
        s.get("model_device", "auto"),
        s.get("model_dtype", "auto"),
        bool(s.get("model_trust", False)),
    )


def model(name: str | None = None) -> Any:
    """The loaded model (the sidebar's, or ``name`` with the sidebar's device and dtype);
    None after showing why it could not be loaded."""
    from legend_core.models import ModelLoadError

    chosen, device, dtype, trust = model_choice()
    try:
        with st.spinner("Loading the model (once per process)…"):
            return _model(name or chosen, device, dtype, trust)
    except (ModelLoadError, ValueError, OSError) as error:
        plain_error("The model could not be loaded.", str(error))
        return None


# --- sidebar ---------------------------------------------------------------------------------


def _keep(key: str, default: Any) -> dict[str, Any]:
    """Widget arguments that keep a sidebar value in session state under ``key``, whatever
    page is shown (the widget's own state is seeded from it and saved back on change)."""
    widget = f"_w_{key}"
    if widget not in st.session_state:
        st.session_state[widget] = st.session_state.get(key, default)

    def save() -> None:
        st.session_state[key] = st.session_state[widget]

    return {"key": widget, "on_change": save}


# --- login mode (on when LEGEND_AUTH_FILE names a users file) -------------------------------


def auth_config() -> auth.AuthConfig | None:
    """The users file's content in login mode, else None (read anew: users may change)."""
    path = auth.auth_file()
    return auth.load_config(path) if path else None


def user() -> auth.User | None:
    """Who is signed in (login mode only)."""
    return st.session_state.get("user")


def login_gate() -> None:
    """In login mode, show the sign-in form and stop the page until someone signs in."""
    settings = auth_config()
    if settings is None or user() is not None:
        return
    st.title("Sign in to Legend Studio")
    with st.form("login"):
        username = st.text_input("Username")
        password = st.text_input("Password", type="password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        signed_in = auth.authenticate(settings, username.strip(), password)
        if signed_in is None:
            st.error("Wrong username or password.")
        else:
            st.session_state["user"] = signed_in
            st.session_state["annotator"] = signed_in.username
            st.rerun()
    st.stop()


def can_delete() -> bool:
    """Deleting data sets, directions and runs: anyone without login mode, else admins."""
    signed_in = user()
    return auth.auth_file() is None or (signed_in is not None and signed_in.is_admin)


def blind_review() -> bool:
    """Whether an admin turned blind review on for everyone (in the users file)."""
    settings = auth_config()
    return bool(settings and settings.blind_review)


def blind_for_me() -> bool:
    """Whether blind review is imposed on this user (set by an admin; admins are exempt)."""
    signed_in = user()
    return blind_review() and not (signed_in is not None and signed_in.is_admin)


def seen_by() -> str | None:
    """Whose reviews this user sees: only their own under blind review, else None
    (everyone's). Blind review is on when an admin set it for all annotators (admins
    themselves still see everything) or when this annotator chose it in the sidebar."""
    return annotator() if st.session_state.get("blind_self") or blind_for_me() else None


def _sign_out() -> None:
    for key in ("user", "annotator", "blind_self", "_w_blind_self"):
        st.session_state.pop(key, None)


def sidebar() -> None:
    """The annotator's name, the model in use, and work running in the background."""
    with st.sidebar:
        signed_in = user()
        if signed_in is not None:
            st.caption("Signed in as")
            st.text(f"{signed_in.name} ({signed_in.username}, {signed_in.role})")
            st.button("Sign out", on_click=_sign_out, key="sign_out")
        else:
            st.text_input(
                "Your name (recorded on every review)",
                placeholder="e.g. alex",
                **_keep("annotator", ""),
            )
        blind_help = "Hide others' margins and reviews of a pair until you have reviewed it."
        if blind_for_me():
            st.toggle("Blind review", value=True, disabled=True, help=blind_help)
            st.caption("Set by an admin for every annotator.")
        else:
            st.toggle("Blind review", help=blind_help, **_keep("blind_self", False))
        name, device, dtype, trust = model_choice()
        st.caption("Model in use")
        st.text(name if name != config.DEFAULT_MODEL else "default (SmolLM2-135M-Instruct)")
        loaded = (name, device, dtype, trust) in _loaded()
        st.caption(f"{device} · {dtype} · " + ("loaded" if loaded else "loads when first needed"))
        with st.expander("Change model"):
            st.text_input(
                "Model: default, a local folder or a hub id",
                help="A hub id must already be in the local cache: nothing is downloaded.",
                **_keep("model_name", config.model_name()),
            )
            st.selectbox("Device", DEVICES, **_keep("model_device", "auto"))
            st.selectbox("Data type", DTYPES, **_keep("model_dtype", "auto"))
            st.checkbox(
                "Trust the model's own code",
                help="Runs code shipped with the model. Only for models whose authors you trust.",
                **_keep("model_trust", False),
            )
        running = jobs().running()
        if running:
            st.caption("Running in the background")
            for job in running:
                st.progress(job.fraction, text=job.label)


def annotator() -> str:
    """Who reviews: the signed-in user in login mode, else the sidebar's name ("" if none)."""
    signed_in = user()
    if signed_in is not None:
        return signed_in.username
    return (st.session_state.get("annotator") or "").strip()


# --- plain text only -------------------------------------------------------------------------


def plain(text: str, height: int | None = None) -> None:
    """Untrusted text, shown verbatim (no markdown, no HTML), wrapped, in a code box."""
    st.code(text if text else " ", language=None, wrap_lines=True, height=height or "content")


def plain_error(title: str, message: str) -> None:
    """An error: a fixed title (ours), then the message as plain text (it may quote data)."""
    st.error(title, icon=":material/error:")
    st.text(message)


def empty(message: str, page: str | None = None, label: str | None = None) -> None:
    """An empty state: what is missing, and a link to where to fix it."""
    st.info(message, icon=":material/info:")
    if page and label:
        st.page_link(page, label=label, icon=":material/arrow_forward:")


# --- pickers (the choice is shared between pages) --------------------------------------------


def _pick(
    label: str,
    options: Sequence[int],
    names: dict[int, str],
    shared: str,
    key: str,
    help: str | None = None,
) -> int | None:
    if not options:
        return None
    if key not in st.session_state and st.session_state.get(shared) in options:
        st.session_state[key] = st.session_state[shared]
    choice = st.selectbox(label, options, format_func=names.__getitem__, key=key, help=help)
    st.session_state[shared] = choice
    return choice


def pick_dataset(s: Store, key: str) -> DatasetInfo | None:
    """A data set picker; the choice carries over to other pages."""
    infos = {d.id: d for d in s.list_datasets()}
    names = {i: f"{d.name}  (#{i}, {d.n_pairs:,} pairs)" for i, d in infos.items()}
    choice = _pick("Data set", list(infos), names, "sel_dataset", f"{key}_dataset")
    return None if choice is None else infos[choice]


def pick_direction(
    s: Store, key: str, only: Callable[[DirectionInfo], bool] | None = None
) -> DirectionInfo | None:
    """A direction picker (optionally restricted); the choice carries over to other pages."""
    infos = {d.id: d for d in s.list_directions() if only is None or only(d)}
    names = {i: direction_name(d) for i, d in infos.items()}
    choice = _pick("Direction", list(infos), names, "sel_direction", f"{key}_direction")
    return None if choice is None else infos[choice]


def direction_name(d: DirectionInfo) -> str:
    auroc = "" if d.auroc is None else f", AUROC {d.auroc:.2f}"
    return f"{d.name or 'unnamed'}  (#{d.id}, layer {d.layer}{auroc})"


def pick_run(s: Store, key: str) -> RunInfo | None:
    """A data set, then one of the directions it has margins for: that margin run."""
    left, right = st.columns(2)
    with left:
        dataset = pick_dataset(s, key)
    if dataset is None:
        return None
    runs = {r.direction_id: r for r in s.list_runs(dataset.id) if r.n_margins > 0}
    with right:
        direction = pick_direction(s, key, only=lambda d: d.id in runs)
        if direction is None:
            st.caption("No direction has margins on this data set yet.")
    return None if direction is None else runs[direction.id]


# --- background work -------------------------------------------------------------------------


@st.fragment(run_every=1.0)
def _poll(key: str) -> None:
    job = jobs().get(key)
    if job is None:
        return
    if not job.running:
        st.rerun()
    total = f": {job.done:,} of {job.total:,}" if job.total else ""
    st.progress(
        job.fraction,
        text=f"{job.label}{total} · {job.elapsed:.0f} s · "
        "you can leave this page, the work goes on",
    )


def job(key: str) -> Job | None:
    """The job under ``key``; while it runs, a progress bar that refreshes every second."""
    current = jobs().get(key)
    if current is not None and current.running:
        _poll(key)
    elif current is not None and current.status == "failed":
        plain_error(f"{current.label} failed.", current.error)
    return current
