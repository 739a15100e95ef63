"""Machine unlearning: remove the effect of a forget set from a trained model, judged against
models retrained without it.

Every method is a pure function `method(loss_fn, params, forget, retain, key, **options) ->
Unlearned(params, losses, selected)`: retraining from scratch on the retain set (the oracle),
gradient ascent, NegGrad+, SCRUB, selective synaptic dampening (SSD), oracle matching and
datamodel matching (oracle outputs predicted with `workbench.influence`). `split` builds a
validated forget/retain split of a training set; `many` runs one method over a stack of models
and keys in one vmapped call. `evaluate` holds accuracies and losses on forget/retain/held-out
data, KLoM (the per-point KL divergence between the margin distributions of many unlearned
models and many oracles), and a loss-threshold membership-inference score. `diffusion` holds a
tiny class-conditional DDPM (x0-prediction MLP, deterministic DDIM sampling), class forgetting
for it, and the integrity metric of Schioppa, Hoogeboom & Heek (2024): the distance between the
original and the unlearned model's samples for the same class and the same initial noise.
"""

from workbench.unlearning import diffusion, matching, methods, metrics
from workbench.unlearning.batch import METHODS, many
from workbench.unlearning.matching import (
    datamodel_matching,
    datamodel_targets,
    match_outputs,
    oracle_matching,
)
from workbench.unlearning.methods import (
    Unlearned,
    fisher_diagonal,
    gradient_ascent,
    neggrad_plus,
    retrain,
    scrub,
    ssd,
)
from workbench.unlearning.sets import Split, split

__all__ = [
    "METHODS", "Split", "Unlearned", "datamodel_matching", "datamodel_targets", "diffusion",
    "metrics", "fisher_diagonal", "matching", "methods", "gradient_ascent", "many", "match_outputs", "neggrad_plus", "oracle_matching",
    "retrain", "scrub", "split", "ssd",
]
