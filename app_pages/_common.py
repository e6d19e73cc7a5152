"""What every page shares: the cached store, model and job registry, the sidebar, pickers,
and the only ways data text is put on screen (plain text, never markdown or HTML)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import streamlit as st

from legend_core import config
from legend_core.app import auth, serve
from legend_core.app.jobs import Job, JobRegistry
from legend_core.data.store import DatasetInfo, DirectionInfo, RunInfo, Store

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
    from legend_core.method.models import load_model

    lm = load_model(name, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    _loaded()[(name, device, dtype, trust_remote_code)] = lm.label
    return lm


@st.cache_resource(show_spinner=False)
def _server_model() -> dict[str, Any]:
    """In login mode the model is a server setting: an admin's choice, used by everyone."""
    return {}


def model_choice() -> tuple[str, str, str, bool]:
    """(name, device, dtype, trust_remote_code) in use: in login mode as an admin chose it
    for everyone, else as chosen in this session's sidebar."""
    s: Any = _server_model() if auth.auth_file() is not None else st.session_state
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
    from legend_core.method.models import ModelLoadError

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


def _keep_shared(key: str, default: Any) -> dict[str, Any]:
    """Like :func:`_keep` for a server setting (login mode): the widget shows the value in
    use on every run, and a change is saved for everyone only if the user is still an
    admin (a callback runs before the page's gate, so it checks the users file itself)."""
    widget = f"_w_{key}"
    st.session_state[widget] = _server_model().get(key, default)

    def save() -> None:
        if _refresh_user() is not None and is_admin():
            _server_model()[key] = st.session_state[widget]

    return {"key": widget, "on_change": save}


# --- login mode (on when LEGEND_AUTH_FILE names a users file) -------------------------------


def auth_config() -> auth.AuthConfig | None:
    """The users file's content in login mode, else None (read anew: users may change)."""
    path = auth.auth_file()
    return auth.load_config(path) if path else None


@st.cache_resource(show_spinner=False)
def _throttle() -> auth.SignInThrottle:
    """Failed sign-ins of this process, per username."""
    return auth.SignInThrottle()


def user() -> auth.User | None:
    """Who is signed in (login mode only), as the users file said at the start of this run."""
    return st.session_state.get("user")


def _refresh_user() -> auth.User | None:
    """Re-read the signed-in user from the users file: a removed user, or one whose
    password changed, is signed out; a new role or name applies at once. Fails closed: an
    unreadable users file signs nobody in."""
    signed_in = user()
    if signed_in is None:
        return None
    try:
        settings = auth_config()
    except ValueError:
        settings = None
    current = (
        auth.refresh(settings, signed_in.username, st.session_state.get("user_stamp"))
        if settings is not None
        else None
    )
    if current is None:
        _sign_out()
        return None
    st.session_state["user"] = current
    st.session_state["annotator"] = current.username
    return current


def login_gate(pages: Sequence[Any]) -> Any:
    """The app's pages (``st.navigation``) for whoever may see them. In login mode, on every
    run, the signed-in user's role is re-read from the users file; a signed-out visitor gets
    the sign-in form only, whatever the URL, and the page stops there."""
    if auth.auth_file() is None:
        return st.navigation(pages)
    try:
        settings = auth_config()
    except ValueError as error:
        _sign_out()
        plain_error("Login mode is on, but the users file cannot be read.", str(error))
        st.stop()
    assert settings is not None
    was_signed_in = user() is not None
    if _refresh_user() is not None:
        return st.navigation(pages)
    # Declared but hidden, and never run: the URL asked for is kept, so signing in from a
    # deep link lands on that page.
    st.navigation(pages, position="hidden")
    st.title("Sign in to Legend Studio")
    if was_signed_in:
        st.info("Your account was changed or removed: sign in again.", icon=":material/info:")
    with st.form("login"):
        username = st.text_input("Username")
        password = st.text_input("Password", type="password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        name = username.strip()
        wait = _throttle().attempt(name)
        signed_in = None if wait else auth.authenticate(settings, name, password)
        if wait:
            minutes = max(1, round(wait / 60))
            st.error(
                f"Too many failed sign-ins for this username: try again in about {minutes} "
                f"minute{'s' if minutes > 1 else ''}."
            )
        elif signed_in is None:
            st.error("Wrong username or password.")
        else:
            _throttle().succeeded(name)
            st.session_state["user"] = signed_in
            st.session_state["user_stamp"] = auth.stamp(settings, name)
            st.session_state["annotator"] = signed_in.username
            st.rerun()
    st.stop()


def is_admin() -> bool:
    """Server powers (reading server files, choosing the model, deleting): anyone without
    login mode (the app then serves loopback, or the deployer opted in), else admins."""
    signed_in = user()
    return auth.auth_file() is None or (signed_in is not None and signed_in.is_admin)


def can_delete() -> bool:
    """Deleting data sets, directions and runs: an admin power."""
    return is_admin()


def serving_guard() -> None:
    """Refuse to serve beyond loopback without login mode, even when the app was started
    without the launcher (``streamlit run app.py --server.address 0.0.0.0``)."""
    address = st.get_option("server.address") or ""
    problem = serve.exposure_problem(
        address, auth.auth_file() is not None, serve.allow_open(os.environ)
    )
    if problem:
        plain_error("This app is not served: it would be open to the network.", problem)
        st.stop()


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
    for key in ("user", "user_stamp", "annotator", "blind_self", "_w_blind_self"):
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
        if is_admin():
            keep = _keep_shared if auth.auth_file() is not None else _keep
            with st.expander("Change model"):
                if auth.auth_file() is not None:
                    st.caption("For everyone: annotators work with the model chosen here.")
                st.text_input(
                    "Model: default, a local folder or a hub id",
                    help="A hub id must already be in the local cache: nothing is downloaded.",
                    **keep("model_name", config.model_name()),
                )
                st.selectbox("Device", DEVICES, **keep("model_device", "auto"))
                st.selectbox("Data type", DTYPES, **keep("model_dtype", "auto"))
                st.checkbox(
                    "Trust the model's own code",
                    help="Runs code shipped with the model. Only for models whose authors "
                    "you trust.",
                    **keep("model_trust", False),
                )
        else:
            st.caption("An admin chooses the model.")
        running = jobs().running()
        if running:
            st.caption("Running in the background")
            for job in running:
                st.progress(job.fraction, text=f"{job.label}: {job.status_line}")


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


def scale_choice(where: Any, key: str, default_note: str, why: str, after: str = "") -> str:
    """The margin-scale picker of the Export and Evaluate pages (one list, one default)."""
    from legend_core.method.margins import SCALE_DEFINITIONS, SCALES

    default = config.DEFAULT_MARGIN_SCALE
    return where.selectbox(
        "Margin scale",
        SCALES,
        index=SCALES.index(default),
        format_func=lambda name: name + (f" ({default_note})" if name == default else ""),
        key=key,
        help=why
        + " · ".join(f"{name}: {text}" for name, text in SCALE_DEFINITIONS.items())
        + after,
    )


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


def run_label(run: RunInfo, newest: bool = False) -> str:
    """A margin run in one line: what tells it apart from the other runs of its data set
    and direction (the dtype of its forward passes), how far it got, and when."""
    dtype = run.settings.get("model_dtype") or "dtype not recorded"
    when = run.created_at.strftime("%Y-%m-%d %H:%M UTC")
    tag = ", newest" if newest else ""
    return f"run #{run.id} ({dtype}{tag}) · {run.n_margins:,} of {run.n_pairs:,} margins · {when}"


def pick_run_of(runs: Sequence[RunInfo], key: str) -> RunInfo | None:
    """One of the runs of a data set and direction (another dtype or engine makes a new
    run): the newest by default, and how many there are, so none is hidden. Reviews belong
    to the pair, so every run shows the same reviews."""
    if not runs:
        return None
    ordered = sorted(runs, key=lambda r: r.id, reverse=True)
    by_id = {r.id: r for r in ordered}
    if len(ordered) == 1:
        st.caption(f"1 margin run of this data set and direction: {run_label(ordered[0])}.")
        return ordered[0]
    if st.session_state.get(f"{key}_run") not in by_id:
        st.session_state[f"{key}_run"] = ordered[0].id  # newest first, and by default
    choice = st.selectbox(
        f"Margin run ({len(ordered)} of this data set and direction)",
        list(by_id),
        format_func=lambda i: run_label(by_id[i], newest=i == ordered[0].id),
        key=f"{key}_run",
        help="Each dtype or engine a data set is annotated with makes a run of its own. "
        "Reviews belong to the pair: every run shows and exports the same reviews.",
    )
    return by_id[choice]


def pick_run(s: Store, key: str) -> RunInfo | None:
    """A data set, one of the directions it has margins for, then one of the runs of that
    pair with margins (newest by default; the count is shown)."""
    left, right = st.columns(2)
    with left:
        dataset = pick_dataset(s, key)
    if dataset is None:
        return None
    runs: dict[int, list[RunInfo]] = {}
    for r in s.list_runs(dataset.id):
        if r.n_margins > 0:
            runs.setdefault(r.direction_id, []).append(r)
    with right:
        direction = pick_direction(s, key, only=lambda d: d.id in runs)
        if direction is None:
            st.caption("No direction has margins on this data set yet.")
    return None if direction is None else pick_run_of(runs[direction.id], key)


def admins() -> frozenset[str]:
    """Admins' names in login mode (their review verdicts adjudicate), else none."""
    return auth.admin_names(auth_config())


# --- background work -------------------------------------------------------------------------


@st.fragment(run_every=1.0)
def _poll(key: str) -> None:
    job = jobs().get(key)
    if job is None:
        return
    if not job.running:
        st.rerun()
    st.progress(
        job.fraction,
        text=f"{job.label}: {job.status_line} · {job.elapsed:.0f} s · "
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
