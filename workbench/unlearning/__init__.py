"""Machine unlearning: remove the effect of a forget set from a trained model, judged against
models retrained without it.

Every method is a pure function `method(loss_fn, params, forget, retain, key, **options) ->
Unlearned(params, losses, selected)`: retraining from scratch on the retain set (the oracle),
gradient ascent, NegGrad+, SCRUB (`methods`), selective synaptic dampening (`ssd`, which draws
nothing at random and so takes no key), oracle matching and datamodel matching (oracle outputs predicted
with `workbench.influence`). Fine-tuning runs through `workbench.train.optimize_streams` with
traced learning rates and step counts, so sweeps compile once. `split` builds a validated
forget/retain split of a training set; `unlearn` applies a method by name to one model (a key
only to methods that take one) and `many` to a stack of models in one vmapped call. `metrics`
holds accuracies and losses on forget/retain/held-out data, KLoM (the per-point KL divergence
between the margin distributions of many unlearned models and many oracles), and a
loss-threshold membership-inference score. `diffusion` holds a tiny class-conditional DDPM
(x0-prediction MLP, deterministic DDIM sampling) and class forgetting for it; `integrity` the
integrity metric of Schioppa, Hoogeboom & Heek (2024): the distance between the original and the
unlearned model's samples for the same class and the same initial noise.

Examples:
    Forget two points of a tiny data set from a 2-parameter logistic model by three steps of
    gradient ascent: the loss on the forget set rises.

    >>> import jax, jax.numpy as jnp
    >>> from workbench import unlearning
    >>> x = jnp.array([[-2.0], [-1.0], [-0.5], [0.5], [1.0], [2.0]])
    >>> data = (x, jnp.array([0.0, 0.0, 1.0, 0.0, 1.0, 1.0]))
    >>> def loss_fn(p, batch):
    ...     logits = batch[0][:, 0] * p["w"] + p["b"]
    ...     return jnp.mean(jnp.logaddexp(0.0, logits) - batch[1] * logits)
    >>> s = unlearning.split(data, [2, 3])
    >>> s.retain_indices
    array([0, 1, 4, 5])
    >>> params = {"w": jnp.array(1.0), "b": jnp.array(0.0)}
    >>> out = unlearning.gradient_ascent(loss_fn, params, s.forget, s.retain, jax.random.key(0),
    ...                                  learning_rate=0.5, num_steps=3, batch_size=2)
    >>> print(round(float(loss_fn(params, s.forget)), 4), round(float(loss_fn(out.params, s.forget)), 4))
    0.9741 1.1302
"""

from workbench.unlearning import diffusion, integrity, matching, methods, metrics
from workbench.unlearning.batch import METHODS, many, takes_key, unlearn
from workbench.unlearning.matching import (
    datamodel_matching,
    datamodel_targets,
    match_outputs,
    oracle_matching,
)
from workbench.unlearning.methods import (
    Unlearned,
    gradient_ascent,
    neggrad_plus,
    retrain,
    scrub,
)
from workbench.unlearning.sets import SetSizes, Split, check_sets, split
from workbench.unlearning.ssd import fisher_diagonal, fisher_ratio, ssd

__all__ = [
    "METHODS", "SetSizes", "Split", "Unlearned", "check_sets", "datamodel_matching", "datamodel_targets",
    "diffusion", "fisher_diagonal", "fisher_ratio", "integrity", "gradient_ascent", "many", "match_outputs", "matching", "methods",
    "metrics", "neggrad_plus", "oracle_matching", "retrain", "scrub", "split", "ssd", "takes_key", "unlearn",
]
