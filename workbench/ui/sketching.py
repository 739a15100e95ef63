"""Panels for the sketching papers: sketch kind and dimension D -> how well per-example gradient
inner products survive (correlation, distortion); subspace dimension -> test accuracy."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from workbench.ui import Panel, panel


def sketch_panel(grads, key, kinds, log2_dim: int = 8, max_log2_dim: int = 14) -> Panel:
    """Kind and log2 D -> `workbench.sketch.quality.sketched_dots` for `grads` [n, p]: the
    correlation of sketched with exact inner products and the spread of the norm distortion.

    Args:
        grads: [n, p] per-example gradients.
        key: PRNG key of the sketches.
        kinds: the sketch kinds offered.
        log2_dim: the initial log2 D.
        max_log2_dim: the slider's largest log2 D.

    Returns:
        The `Panel`.
    """
    import functools

    import ipywidgets as w

    from workbench.plots.sketching import dots_scatter
    from workbench.sketch import quality

    kinds = list(kinds)
    controls = {
        "kind": w.Dropdown(options=kinds, value="affd" if "affd" in kinds else kinds[0], description="sketch"),
        "log2_dim": w.IntSlider(value=log2_dim, min=4, max=max_log2_dim, description="log2 D (sketch dimension)",
                                continuous_update=False),
    }

    def summary(r):
        return {"D": r.dim, "correlation": float(np.corrcoef(r.exact, r.sketched)[0, 1]),
                "median |distortion - 1|": float(np.median(np.abs(r.ratios - 1)))}

    return panel(functools.partial(quality.sketched_dots, grads, key=key), controls,
                 lambda r: dots_scatter(r.exact, r.sketched, r.ratios, f"{r.kind}, D = {r.dim}"), summary=summary,
                 button_text="Sketch", title="Per-example gradients before and after the sketch")


def intrinsic_panel(fn: Callable, dim: int = 40, kinds=("dense", "srht", "affd")) -> Panel:
    """`fn(dims=[d], kind=kind) -> sketch.IntrinsicSweepResult` (a partial of `sketch.intrinsic_sweep`
    with everything but the dimensions and the kind): one subspace dimension per run; the accuracy
    of every dimension tried so far is drawn on one curve, so a few clicks trace the paper's
    accuracy-against-d plot.

    Args:
        fn: `fn(dims=[d], kind=kind) -> IntrinsicSweepResult`, e.g. a partial of
            `experiments.intrinsic_dimension.digits_intrinsic_sweep`.
        dim: the initial subspace dimension d.
        kinds: the subspace sketch kinds offered.

    Returns:
        The `Panel` (its history keeps every d tried).
    """
    import ipywidgets as w

    from workbench.plots.sketching import accuracy_vs_dim

    controls = {
        "dim": w.IntSlider(value=dim, min=2, max=1000, step=2, description="subspace dimension d",
                           continuous_update=False),
        "kind": w.Dropdown(options=list(kinds), value=kinds[0], description="subspace sketch"),
    }
    seen: dict[tuple[str, int], float] = {}

    def show(r):
        kind = controls["kind"].value
        for d, a in zip(r.dims, r.accuracy, strict=True):
            seen[(kind, int(d))] = float(a)
        dims = np.array([d for (k, d) in seen if k == kind])
        acc = np.array([a for (k, _), a in seen.items() if k == kind])
        return accuracy_vs_dim(dims, acc, r.full_accuracy, r.threshold, f"{kind} subspaces (n = {r.num_params})")

    def summary(r):
        return {"test accuracy": float(r.accuracy[-1]), "full model": float(r.full_accuracy),
                "reaches 90%": bool(r.accuracy[-1] >= r.threshold)}

    def train_in_subspace(dim, kind):
        return fn(dims=[dim], kind=kind)

    p = panel(train_in_subspace, controls, show, summary=summary, button_text="Train in subspace",
              title="Train in a random d-dimensional subspace")
    p.on_clear = seen.clear
    return p
