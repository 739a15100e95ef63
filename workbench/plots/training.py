"""Training curves: the minibatch loss against step, static (matplotlib) or interactive (plotly)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def smooth(values, window: int) -> np.ndarray:
    """Trailing moving average (window clipped at the start), for noisy minibatch losses.

    Args:
        values: the sequence to smooth [T].
        window: the number of trailing values averaged (<= 1: no smoothing).

    Returns:
        The smoothed values [T], float; entry t averages values[max(0, t - window + 1) .. t].
    """
    values = np.asarray(values, dtype=float)
    if window <= 1 or values.size == 0:
        return values
    csum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, values.size + 1)
    lo = np.maximum(idx - window, 0)
    return (csum[idx] - csum[lo]) / (idx - lo)


def loss_curves(histories: Mapping[str, Mapping[str, np.ndarray]], smooth_window: int = 20, log_y: bool = True):
    """Matplotlib figure of training loss against step, one line per labelled history.

    Args:
        histories: label -> a `train` history with "step" and "loss" arrays [T].
        smooth_window: the trailing moving-average window of the bold line (`smooth`).
        log_y: whether the loss axis is logarithmic.

    Returns:
        The matplotlib figure (raw losses faint, smoothed ones bold).
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for label, history in histories.items():
        ax.plot(history["step"], history["loss"], alpha=0.25, lw=0.8)
        ax.plot(history["step"], smooth(history["loss"], smooth_window), color=ax.lines[-1].get_color(), label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (minibatch)")
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def loss_curves_plotly(histories: Mapping[str, Mapping[str, np.ndarray]], smooth_window: int = 20, log_y: bool = True):
    """The same as `loss_curves`, as an interactive plotly figure (hover for values).

    Args:
        histories: label -> a `train` history with "step" and "loss" arrays [T].
        smooth_window: the trailing moving-average window (`smooth`).
        log_y: whether the loss axis is logarithmic.

    Returns:
        The plotly figure (smoothed losses only).
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    for label, history in histories.items():
        fig.add_trace(go.Scatter(x=history["step"], y=smooth(history["loss"], smooth_window), name=label, mode="lines"))
    fig.update_layout(xaxis_title="step", yaxis_title="training loss (smoothed)", template="plotly_white",
                      yaxis_type="log" if log_y else "linear", width=700, height=420)
    return fig
