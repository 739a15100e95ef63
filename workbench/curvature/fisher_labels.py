"""Which labels a Fisher is taken at, and the output cotangents that give its gradients.

K-FAC's output gradients g are pullbacks of a cotangent of the model's outputs
(`workbench.curvature.capture.trace`). `loss_cotangents` makes them for the three Fisher kinds:
the gradient of each example's loss at the data labels ("empirical") or at labels sampled from
the model's predictive distribution ("true", `sample_targets`), or the columns of a square root
of each example's output Hessian ("ggn": their outer products sum to the Gauss-Newton matrix
exactly). Sampled labels draw from one key per example (`example_keys`), so chunking never
changes a sample.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from workbench.models import Functional

FISHERS = ("true", "empirical", "ggn")
SAMPLED_LOSSES = ("cross_entropy", "squared_error")  # output losses whose labels `true` can sample


def sample_targets(functional: Functional, outputs: jax.Array, keys: jax.Array) -> jax.Array:
    """Labels drawn from the model's predictive distribution, one key per example (the true Fisher).

    Cross-entropy: a class per position from softmax(logits); squared error: outputs + N(0, I)
    noise (the Gaussian whose negative log-likelihood is 0.5 ||output - y||^2).

    Args:
        functional: the model; its `output_loss_fn` must be "cross_entropy" or "squared_error".
        outputs: the model's outputs [n, ...].
        keys: [n] typed `jax.random` keys, one per example.

    Returns:
        Targets the output loss takes: int classes [n, ...] or real targets shaped like `outputs`.

    Raises:
        ValueError: another output loss (its predictive distribution is unknown).
    """
    loss = getattr(functional.output_loss_fn, "__name__", "?")
    if loss == "cross_entropy":
        return jax.vmap(lambda k, o: jax.random.categorical(k, o, axis=-1))(keys, outputs)
    if loss == "squared_error":
        return jax.vmap(lambda k, o: o + jax.random.normal(k, o.shape, o.dtype))(keys, outputs)
    raise ValueError(f"fisher='true' samples labels from the model's predictive distribution, known for the output "
                     f"losses {SAMPLED_LOSSES}, not {loss!r}; use fisher='empirical' (the data labels) or 'ggn'")


def loss_cotangents(functional: Functional, outputs, y, fisher: str, keys=None) -> tuple[jax.Array, jax.Array]:
    """Cotangents of the outputs whose pullbacks give the output gradients K-FAC averages.

    "empirical" and "true": the gradient of each example's loss at the data labels or at labels
    sampled from the model ([1, n, ...]). "ggn": the columns of a square root R_n of each
    example's output Hessian, R_n R_n^T = d^2 loss_n / d output^2 ([O, n, ...], O the output
    size): their outer products sum to the Gauss-Newton matrix exactly.

    Args:
        functional: the model.
        outputs: its outputs [n, ...].
        y: the data labels [n, ...].
        fisher: "true", "empirical" or "ggn".
        keys: [n] typed keys for "true".

    Returns:
        (cotangents [K, n, ...], per-example losses [n] at the labels used; for "ggn", at the data).
    """
    targets = sample_targets(functional, outputs, keys) if fisher == "true" else y
    losses, vjp = jax.vjp(lambda o: functional.output_loss_fn(o, targets), outputs)
    if fisher != "ggn":
        return vjp(jnp.ones_like(losses))[0][None], losses
    n, shape = outputs.shape[0], outputs.shape[1:]
    size = math.prod(shape)

    def example_loss(o, t):
        return functional.output_loss_fn(o.reshape((1, *shape)), t[None])[0]

    hessians = jax.vmap(jax.hessian(example_loss))(outputs.reshape(n, size), y)  # [n, O, O]
    values, vectors = jnp.linalg.eigh(0.5 * (hessians + jnp.swapaxes(hessians, 1, 2)))
    roots = vectors * jnp.sqrt(jnp.clip(values, 0.0))[:, None, :]  # R_n R_n^T = H_n
    return jnp.moveaxis(roots, 2, 0).reshape((size, n, *shape)), losses


def check_fisher(fisher: str, key, functional: Functional, caller: str) -> None:
    """Refuse an unknown Fisher kind, or "true" without a key or for a loss it cannot sample.

    Args:
        fisher: the Fisher kind asked for.
        key: the `jax.random` key given (or None).
        functional: the model.
        caller: the public function asking, named in errors.

    Raises:
        ValueError: the kind is unknown, or "true" lacks its key or a samplable output loss.
    """
    if fisher not in FISHERS:
        raise ValueError(f"{caller}: fisher must be one of {FISHERS} (labels sampled from the model, the data "
                         f"labels, or the exact expectation over labels), got {fisher!r}")
    if fisher == "true":
        if key is None:
            raise ValueError(f"{caller}: fisher='true' samples labels from the model and needs key= (a jax.random "
                             "key); or use fisher='empirical' (the data labels)")
        loss = getattr(functional.output_loss_fn, "__name__", "?")
        if loss not in SAMPLED_LOSSES:
            raise ValueError(f"{caller}: fisher='true' knows how to sample labels for the output losses "
                             f"{SAMPLED_LOSSES}, not {loss!r}; use fisher='empirical' or 'ggn'")


def example_keys(key, indices: jax.Array) -> jax.Array:
    """One key per example, from its index in the dataset (so chunking never changes a sample).

    Args:
        key: the `jax.random` key of the whole fit.
        indices: [c] int indices of the examples.

    Returns:
        [c] typed keys, `fold_in(key, index)`.
    """
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(indices)
