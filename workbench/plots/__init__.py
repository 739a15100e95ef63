"""Figure builders, one module per topic; every function takes plain arrays or the NamedTuple
results of the package and returns a figure (matplotlib for the static figures a paper saves as
PNG, plotly for interactive ones), with its axis labels, legend and title already set, so that a
notebook cell is `fig = plots.<topic>.<function>(...)` then `workbench.show(fig, name)` (saved
into the run and shown inline).

- `training`: loss curves (`loss_curves`, `loss_curves_plotly` and `smooth` are re-exported here);
- `spectra`: Hessian spectra, trace estimates and sharpness at the edge of stability;
- `sketching`: sketch quality, the sketched-dot histograms and the intrinsic-dimension search;
- `influence`: predicted vs retrained effects, proponents, LDS and mislabel AUC, fading,
  correcting mispredictions;
- `schedules`: learning-rate schedules, their last-iterate bounds and refinement;
- `convex`: SGD suboptimality quantiles and the Harvey construction;
- `icl`: in-context learning by linear self-attention;
- `unlearning`: method tables, the gradient-ascent cliff, the SSD sweep, diffusion samples;
- `distributed`: the transport plan and time per step of the distributed-minimisation paper;
- `continual`: accuracy on every task at every step, the gap at a switch, SGD's path against the
  straight line, curvature along a run;
- `transport`: learnt maps drawn over the target, the method x problem L2-UVP table.

`convex`, `influence`, `schedules`, `spectra` and `training` are imported with the package; the
others on use (`from workbench.plots import sketching`). Plots sit in the presentation layer: they
may import any capability or experiment for its result types; only notebooks, `workbench.ui` and
`workbench.run` import them.
"""

from __future__ import annotations

from workbench.plots import convex, influence, schedules, spectra, training
from workbench.plots.training import loss_curves, loss_curves_plotly, smooth

__all__ = ["convex", "influence", "loss_curves", "loss_curves_plotly", "schedules", "smooth", "spectra", "training"]
