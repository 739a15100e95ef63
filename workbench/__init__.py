"""A notebook-first research workbench for understanding how neural networks train.

Submodules are imported on use (`from workbench import curvature`); the package root only
carries the two calls every notebook makes: `record(...)` and `save_figure(fig, name)`.
"""

from workbench.results import record, save_figure

__all__ = ["record", "save_figure"]
__version__ = "0.1.0"
