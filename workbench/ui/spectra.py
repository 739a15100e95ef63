"""Panels for the spectrum papers: the edge of stability (step size and width -> sharpness against
2/lr over training) and the Hessian spectral density (Lanczos steps, probes, kernel width)."""

from __future__ import annotations

from collections.abc import Callable

from workbench.ui import Panel, panel


def sharpness_panel(fn: Callable, learning_rate: float = 0.05, hidden_size: int = 32, num_steps: int = 300,
                    overlay: int = 4) -> Panel:
    """`fn(learning_rate, hidden_size, num_steps) -> SharpnessRun` (e.g. a partial of
    `experiments.spectra.digits_sharpness_run`): trains by full-batch GD and shows the sharpness of
    the last `overlay` runs against their thresholds 2/lr (dashed) and their losses.

    Args:
        fn: the training function; called with keywords `learning_rate`, `hidden_size` and
            `num_steps`, it returns an `experiments.spectra.SharpnessRun`.
        learning_rate: the slider's starting GD learning rate (default 0.05; range 10^-2.5 to
            10^-0.5).
        hidden_size: the slider's starting width in units per layer (default 32; 8 to 128).
        num_steps: the slider's starting number of GD steps (default 300; 100 to 3000).
        overlay: how many of the latest runs are drawn together (default 4); Clear forgets them.

    Returns:
        The `Panel`; display `panel.widget`. A diverged run is flagged.
    """
    import ipywidgets as w

    from workbench.experiments.spectra import stability_ratio
    from workbench.plots.spectra import sharpness_vs_threshold

    controls = {
        "learning_rate": w.FloatLogSlider(value=learning_rate, base=10, min=-2.5, max=-0.5, step=0.05,
                                          readout_format=".3g", description="learning rate (GD)", continuous_update=False),
        "hidden_size": w.IntSlider(value=hidden_size, min=8, max=128, step=8, description="width (units/layer)",
                                   continuous_update=False),
        "num_steps": w.IntSlider(value=num_steps, min=100, max=3000, step=100, description="GD steps",
                                 continuous_update=False),
    }
    runs: list = []

    def show(run):
        runs.insert(0, run)
        del runs[overlay:]
        return sharpness_vs_threshold(runs[::-1])

    def summary(run):
        ratio = float("nan") if run.diverged else stability_ratio(run).mean  # a diverged run has no ratio
        return {"2/lr": 2 / run.learning_rate, "final sharpness": float(run.history["sharpness"][-1]),
                "sharpness/(2/lr), last half": ratio, "diverged": run.diverged}

    def verdict(run):
        return "the loss blew up (GD diverged); try a smaller learning rate" if run.diverged else None

    p = panel(fn, controls, show, summary=summary, verdict=verdict, button_text="Train",
              title="Full-batch GD: does the sharpness settle at 2/lr?")
    p.on_clear = runs.clear
    return p


def density_panel(fn: Callable, num_iters: int = 40, num_probes: int = 4, sigma2: float = 1e-4) -> Panel:
    """`fn(num_iters, num_probes, sigma2) -> spectrum.Density` (e.g. a partial of
    `spectrum.spectral_density` on the Hessian operator): the density, log-scaled.

    Args:
        fn: the estimator; called with keywords `num_iters`, `num_probes` and `sigma2`, it returns
            a `spectrum.Density`.
        num_iters: the slider's starting number of Lanczos steps (default 40; 10 to 200).
        num_probes: the slider's starting number of probe vectors (default 4; 1 to 50).
        sigma2: the slider's starting Gaussian kernel variance, relative to the squared spectral
            range (default 1e-4; 1e-7 to 1e-1).

    Returns:
        The `Panel`; the history keeps the largest and smallest Ritz values.
    """
    import ipywidgets as w
    import numpy as np

    from workbench.plots.spectra import spectral_densities

    controls = {
        "num_iters": w.IntSlider(value=num_iters, min=10, max=200, step=10, description="Lanczos steps",
                                 continuous_update=False),
        "num_probes": w.IntSlider(value=num_probes, min=1, max=50, description="probe vectors", continuous_update=False),
        "sigma2": w.FloatLogSlider(value=sigma2, base=10, min=-7, max=-1, step=0.5, readout_format=".1e",
                                   description="kernel variance σ² (× spectral range²)", continuous_update=False),
    }

    def summary(d):
        nodes = np.asarray(d.nodes)
        return {"largest Ritz value": float(nodes.max()), "smallest Ritz value": float(nodes.min())}

    return panel(fn, controls, lambda d: spectral_densities({"Hessian": d}), summary=summary,
                 button_text="Estimate", title="Stochastic Lanczos quadrature of the Hessian")
