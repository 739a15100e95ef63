"""Figure builders, one module per topic; every function takes plain arrays or the NamedTuple
results of the package and returns a figure (matplotlib for the static figures a paper saves as
PNG, plotly for interactive ones), with its axis labels, legend and title already set, so that a
notebook cell is `fig = plots.<topic>.<function>(...)`, `workbench.save_figure(fig, name)`,
`plt.show()`. `training` draws loss curves (`loss_curves`, `loss_curves_plotly` and `smooth` are
re-exported here), `spectra` Hessian spectra, trace estimates and sharpness at the edge of
stability, `influence` the influence-function evaluations (predicted vs retrained effects,
proponents, LDS and mislabel AUC, fading, correcting mispredictions), `schedules` learning-rate
schedules, their last-iterate bounds and refinement, `convex` the SGD suboptimality quantiles and
the Harvey construction. Plots sit in the presentation layer: they may import any capability or
experiment for its result types, and only notebooks, `workbench.ui` and `workbench.run.papers` import
them.
"""

from __future__ import annotations

from workbench.plots import convex, influence, schedules, spectra, training
from workbench.plots.training import loss_curves, loss_curves_plotly, smooth

__all__ = ["convex", "influence", "loss_curves", "loss_curves_plotly", "schedules", "smooth", "spectra", "training"]
