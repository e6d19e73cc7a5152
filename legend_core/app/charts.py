"""Plotly figures for the app, built from the tables of :mod:`legend_core.app.views`,
:mod:`legend_core.app.lab` and :mod:`legend_core.app.maps`.

Data set text is untrusted: Plotly renders a subset of HTML in hover labels and tick labels,
so every data string that reaches a figure goes through :func:`escape` first, and a payload
like ``<img src=x onerror=...>`` shows as the literal characters.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from legend_core.app.views import snippet

HARMLESS = "#2a9d8f"
HARMFUL = "#e76f51"
CLASS_COLOURS = {"harmless": HARMLESS, "harmful": HARMFUL}
MARGIN_SCALE = "RdBu"
#: Above this many points, scatter plots switch to WebGL.
WEBGL_FROM = 5000


def escape(text: object) -> str:
    """Text made safe for Plotly's HTML-like labels (``<``, ``>``, ``&``, quotes escaped)."""
    return html.escape(str(text), quote=True)


def _layout(fig: go.Figure, height: int = 360, title: str = "", **kwargs: object) -> go.Figure:
    fig.update_layout(
        height=height,
        margin={"l": 10, "r": 10, "t": 76, "b": 10},
        title={"text": title, "x": 0, "xanchor": "left", "y": 0.985, "yanchor": "top"},
        title_font_size=15,
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 0, "xanchor": "left"},
        **kwargs,
    )
    return fig


def _scatter(n: int) -> type[go.Scatter] | type[go.Scattergl]:
    return go.Scattergl if n > WEBGL_FROM else go.Scatter


# --- direction lab ---------------------------------------------------------------------------


def layer_chart(frame: pd.DataFrame) -> go.Figure:
    """Held-out accuracy, AUROC and paired accuracy per layer; the chosen layer marked."""
    fig = go.Figure()
    for column, name in (
        ("auroc", "AUROC"),
        ("accuracy", "accuracy"),
        ("paired_accuracy", "paired accuracy"),
    ):
        fig.add_trace(
            go.Scatter(x=frame["layer"], y=frame[column], mode="lines+markers", name=name)
        )
    chosen = frame.loc[frame["chosen"], "layer"]
    if len(chosen):
        fig.add_vline(
            x=int(chosen.iloc[0]),
            line_dash="dash",
            line_color="#555",
            annotation_text=f"chosen layer {int(chosen.iloc[0])}",
            annotation_position="top left",
        )
    fig.add_hline(y=0.5, line_dash="dot", line_color="#bbb")
    fig.update_yaxes(range=[0, 1.05], title="held-out score")
    fig.update_xaxes(title="layer", dtick=1 if len(frame) <= 40 else None)
    return _layout(fig, title="Held-out quality per layer")


def labelled_layer_chart(rows: Sequence[dict], chosen: int) -> go.Figure:
    """Agreement with labelled pairs per layer (``learning.LearnReport.rows``): the learned
    probe's cross-validated agreement with its interval, the part where the safer response
    is the longer one, the contrastive direction, and random directions' 97.5th percentile."""
    frame = pd.DataFrame(rows)
    layers = frame["layer"].astype(str).str.rstrip("*").astype(int)
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=layers,
            y=frame["learned (CV)"],
            mode="lines+markers",
            name="learned (cross-validated)",
            error_y={
                "type": "data",
                "symmetric": False,
                "array": frame["high"] - frame["learned (CV)"],
                "arrayminus": frame["learned (CV)"] - frame["low"],
            },
        )
    )
    series = [("safer longer", "learned, safer response longer")]
    series += [("contrastive", "contrastive direction"), ("random 97.5%", "random, 97.5%")]
    for column, name in series:
        if column in frame:
            fig.add_trace(go.Scatter(x=layers, y=frame[column], mode="lines", name=name))
    fig.add_vline(
        x=chosen,
        line_dash="dash",
        line_color="#555",
        annotation_text=f"chosen layer {chosen}",
        annotation_position="top left",
    )
    fig.add_hline(y=0.5, line_dash="dot", line_color="#bbb")
    fig.update_yaxes(range=[0.3, 1.0], title="agreement with the labels")
    fig.update_xaxes(title="layer", dtick=1 if len(frame) <= 40 else None)
    return _layout(fig, title="Agreement with labelled pairs per layer")


def learning_curve_chart(frame: pd.DataFrame) -> go.Figure:
    """Held-out agreement against the number of reviews learned from (``learning.curve_frame``;
    0 is the run's own direction), with one standard deviation over the repeats."""
    fig = go.Figure(
        go.Scatter(
            x=frame["reviews learned from"],
            y=frame["held-out agreement"],
            mode="lines+markers",
            error_y={"type": "data", "array": frame["sd"]},
            name="learned",
        )
    )
    fig.add_hline(y=0.5, line_dash="dot", line_color="#bbb")
    fig.update_yaxes(range=[0.3, 1.0], title="agreement on held-out reviewed pairs")
    fig.update_xaxes(title="reviews learned from (0: the run's direction)")
    return _layout(fig, height=320, title="Does reviewing teach the direction?")


def length_r2_chart(frame: pd.DataFrame) -> go.Figure:
    """Share of the projection's variance explained by response length, per layer."""
    colours = ["#264653" if c else "#a8b8c0" for c in frame["chosen"]]
    fig = go.Figure(go.Bar(x=frame["layer"], y=frame["length_r2"], marker_color=colours))
    fig.update_yaxes(range=[0, 1], title="length R²")
    fig.update_xaxes(title="layer (dark: chosen)")
    return _layout(fig, height=300, title="Length check: how much length explains, per layer")


def projection_histogram(frame: pd.DataFrame) -> go.Figure:
    """Histograms of the held-out projections of the two classes."""
    fig = go.Figure()
    for name in ("harmless", "harmful"):
        values = frame.loc[frame["class"] == name, "projection"]
        fig.add_trace(
            go.Histogram(
                x=values, name=name, marker_color=CLASS_COLOURS[name], opacity=0.65, nbinsx=30
            )
        )
    fig.update_layout(barmode="overlay")
    fig.update_xaxes(title="projection on the direction")
    fig.update_yaxes(title="held-out responses")
    return _layout(fig, title="Held-out projections")


def length_scatter(frame: pd.DataFrame) -> go.Figure:
    """Projection against response length in tokens, by class."""
    fig = go.Figure()
    for name in ("harmless", "harmful"):
        part = frame[frame["class"] == name]
        fig.add_trace(
            go.Scatter(
                x=part["tokens"],
                y=part["projection"],
                mode="markers",
                name=name,
                marker={"color": CLASS_COLOURS[name], "size": 7, "opacity": 0.75},
                customdata=np.stack([part["split"].astype(str)], axis=-1),
                hovertemplate="%{customdata[0]}<br>tokens %{x}<br>projection %{y:.3f}"
                "<extra></extra>",
            )
        )
    fig.update_xaxes(title="response tokens")
    fig.update_yaxes(title="projection")
    return _layout(fig, title="Projection vs response length")


def contrast_map(frame: pd.DataFrame) -> go.Figure:
    """The contrastive responses in 2-D, coloured by class; hover shows escaped text."""
    fig = go.Figure()
    for name in ("harmless", "harmful"):
        part = frame[frame["class"] == name]
        fig.add_trace(
            go.Scatter(
                x=part["x"],
                y=part["y"],
                mode="markers",
                name=name,
                marker={"color": CLASS_COLOURS[name], "size": 8, "opacity": 0.8},
                customdata=np.stack(
                    [part["projection"].round(3).astype(str), [escape(t) for t in part["text"]]],
                    axis=-1,
                )
                if len(part)
                else None,
                hovertemplate="projection %{customdata[0]}<br>%{customdata[1]}<extra></extra>",
            )
        )
    fig.update_xaxes(showticklabels=False, title=None)
    fig.update_yaxes(showticklabels=False, title=None)
    return _layout(fig, height=420, title="Contrastive responses in 2-D")


def similarity_heatmap(matrix: pd.DataFrame) -> go.Figure:
    """Cosine similarity between directions (blank where not comparable)."""
    labels = [escape(x) for x in matrix.index]
    values = matrix.to_numpy(dtype=np.float64)
    text = [["" if np.isnan(v) else f"{v:.2f}" for v in row] for row in values]
    fig = go.Figure(
        go.Heatmap(
            z=values,
            x=labels,
            y=labels,
            zmin=-1,
            zmax=1,
            colorscale=MARGIN_SCALE,
            text=text,
            texttemplate="%{text}",
            hovertemplate="%{y} · %{x}<br>cosine %{z:.3f}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, height=120 + 40 * len(labels), title="Cosine similarity")


# --- annotate and explore --------------------------------------------------------------------


def margin_histogram(values: Sequence[float] | np.ndarray) -> go.Figure:
    """Histogram of margins with zero marked (left of it: the direction disagrees)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    fig = go.Figure(go.Histogram(x=x, nbinsx=60, marker_color="#457b9d"))
    fig.add_vline(x=0, line_dash="dash", line_color="#c0392b")
    fig.update_xaxes(title="margin (negative: the direction disagrees with the label)")
    fig.update_yaxes(title="pairs")
    return _layout(fig, height=320, title="Margins")


def response_map(frame: pd.DataFrame) -> go.Figure:
    """Chosen (circles) and rejected (crosses) responses, coloured by projection.

    Each point carries its pair id as ``customdata[0]`` (the page reads selections from it).
    """
    fig = go.Figure()
    lo, hi = (frame["projection"].min(), frame["projection"].max()) if len(frame) else (0, 1)
    for side, symbol in (("chosen", "circle"), ("rejected", "x")):
        part = frame[frame["side"] == side]
        trace = _scatter(len(frame))
        fig.add_trace(
            trace(
                x=part["x"],
                y=part["y"],
                mode="markers",
                name=side,
                marker={
                    "symbol": symbol,
                    "size": 8,
                    "color": part["projection"],
                    "colorscale": "Viridis",
                    "cmin": lo,
                    "cmax": hi,
                    "showscale": side == "chosen",
                    "colorbar": {"title": {"text": "projection"}, "thickness": 12},
                    "line": {"width": 0},
                },
                customdata=np.stack(
                    [
                        part["pair_id"].astype(np.int64),
                        part["margin"].round(3).astype(str),
                        [escape(t) for t in part["text"]],
                    ],
                    axis=-1,
                )
                if len(part)
                else None,
                hovertemplate=f"pair %{{customdata[0]}} · {side}<br>margin %{{customdata[1]}}"
                "<br>%{customdata[2]}<extra></extra>",
            )
        )
    fig.update_xaxes(showticklabels=False, title=None)
    fig.update_yaxes(showticklabels=False, title=None)
    return _layout(fig, height=520, dragmode="select", title="Responses in 2-D")


def margin_length_scatter(frame: pd.DataFrame) -> go.Figure:
    """Margin against the length difference (chosen minus rejected, characters)."""
    trace = _scatter(len(frame))
    fig = go.Figure(
        trace(
            x=frame["length_diff"],
            y=frame["effective_margin"],
            mode="markers",
            marker={
                "size": 6,
                "opacity": 0.7,
                "color": np.where(frame["effective_margin"] < 0, HARMFUL, "#457b9d"),
            },
            customdata=np.stack(
                [
                    frame["pair_id"].astype(np.int64),
                    [escape(snippet(t, 80)) for t in frame["prompt"]],
                ],
                axis=-1,
            )
            if len(frame)
            else None,
            hovertemplate="pair %{customdata[0]}<br>length diff %{x}<br>margin %{y:.3f}"
            "<br>%{customdata[1]}<extra></extra>",
        )
    )
    fig.add_hline(y=0, line_dash="dash", line_color="#c0392b")
    fig.update_xaxes(title="chosen minus rejected length (characters)")
    fig.update_yaxes(title="margin")
    return _layout(fig, height=420, dragmode="select", title="Margin vs response length")
