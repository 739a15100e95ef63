"""In-context learning of linear regression by linear self-attention (von Oswald et al., ICML 2023;
Fu et al., NeurIPS 2024): a task sampler and its tokens (`tasks`), linear self-attention in Flax
NNX with K layers, with or without MLPs, and the weights that make it run gradient descent and
GD++ (`lsa`), the in-context baselines GD with a line-searched step, fitted GD++ and iterative
Newton (`algorithms`), and alignment measures between a trained model and an algorithm
(`alignment`). Training a model on tasks is a recipe in `workbench.experiments.icl`.

Examples:
    The construction: one LSA layer with W_K = W_Q = [[I,0],[0,0]], W_V = [[0,0],[0,-1]],
    P = eta/N I predicts exactly like one GD step of size eta on each task's context:

    >>> import jax
    >>> import numpy as np
    >>> from workbench import icl
    >>> tasks = icl.sample_tasks(jax.random.key(0), 64, dim=3, context_length=8)
    >>> layer = icl.gd_weights(3, 8, 0.5)
    >>> lsa = icl.predict(layer, icl.tokens(tasks))
    >>> gd = icl.gd_predictions(tasks, 0.5, 1)[-1]
    >>> bool(np.max(np.abs(lsa - gd)) < 1e-5), lsa.shape
    (True, (64,))
"""

from workbench.icl.algorithms import (
    GDPlusPlus,
    LineSearch,
    fit_gdpp,
    gd_predictions,
    gd_reference_predictions,
    gdpp_predictions,
    least_squares_predictions,
    line_search_eta,
    newton_predictions,
)
from workbench.icl.alignment import (
    Alignment,
    Interpolation,
    StepMatch,
    alignment,
    interpolation_losses,
    lsa_loss,
    lsa_predictor,
    match_steps,
    query_sensitivity,
)
from workbench.icl.lsa import (
    EffectiveWeights,
    Forward,
    LinearSelfAttention,
    canonical_scale,
    check_tokens,
    effective_weights,
    forward,
    from_effective,
    gd_weights,
    gdpp_weights,
    has_mlp,
    init_params,
    layer_predictions,
    predict,
)
from workbench.icl.tasks import (
    Tasks,
    conditioned_covariance,
    covariance_factor,
    icl_loss,
    icl_losses,
    sample_tasks,
    tokens,
)

__all__ = [
    "Alignment", "EffectiveWeights", "GDPlusPlus", "Interpolation", "LineSearch", "LinearSelfAttention",
    "StepMatch", "Tasks", "alignment", "canonical_scale", "check_tokens", "conditioned_covariance",
    "covariance_factor", "effective_weights", "fit_gdpp", "forward", "from_effective", "gd_predictions", "gd_reference_predictions",
    "gd_weights", "gdpp_predictions", "gdpp_weights", "icl_loss", "init_params", "interpolation_losses",
    "layer_predictions", "least_squares_predictions", "line_search_eta", "lsa_predictor", "match_steps",
    "newton_predictions", "predict", "query_sensitivity", "sample_tasks", "tokens", "icl_losses", "lsa_loss", "has_mlp", "Forward",
]
