"""A tiny softmax regression with its per-example gradients and Hessian written out in NumPy:
float64 references that share no code with the package (tests/ helper module).

Parameters {"b": [c], "w": [d, c]} flatten (`ravel_pytree`: keys sorted, row-major) to
theta = (b_1..b_c, w_11, w_12, ..., w_dc); the logits z = x w + b have Jacobian
J = [I_c, x (x) I_c] in theta."""

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.cache
def loss(l2: float):
    """`loss_fn(params, batch)`: mean cross-entropy + 0.5 l2 |params|^2 (one function per l2, so
    estimators built on it share compiled code)."""

    def loss_fn(params, batch):
        x, y = batch
        log_probs = jax.nn.log_softmax(x @ params["w"] + params["b"])
        data_loss = -jnp.mean(jnp.take_along_axis(log_probs, y[:, None], axis=1))
        return data_loss + 0.5 * l2 * (jnp.sum(params["w"] ** 2) + jnp.sum(params["b"] ** 2))

    return loss_fn


def problem(seed: int, n: int, d: int = 4, c: int = 3, scale: float = 0.3):
    """(params, x [n, d], y [n]) drawn from `seed`: random, unfitted parameters."""
    kx, ky, kp = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (n, d), jnp.float64)
    y = jax.random.randint(ky, (n,), 0, c).astype(jnp.int32)
    params = {"w": scale * jax.random.normal(kp, (d, c), jnp.float64), "b": jnp.zeros((c,), jnp.float64)}
    return params, x, y


def _jacobians_and_probs(params, x):
    w, b = np.asarray(params["w"]), np.asarray(params["b"])
    x = np.asarray(x, np.float64)
    z = x @ w + b
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    c = w.shape[1]
    jac = np.stack([np.hstack([np.eye(c), np.kron(xi[None, :], np.eye(c))]) for xi in x])  # [n, c, p]
    return jac, p


def per_example_grads(params, x, y, l2: float = 0.0) -> np.ndarray:
    """[n, p] gradients of each example's loss (its cross-entropy + 0.5 l2 |theta|^2)."""
    jac, p = _jacobians_and_probs(params, x)
    residual = p - np.eye(p.shape[1])[np.asarray(y)]
    theta = np.concatenate([np.ravel(params["b"]), np.ravel(params["w"])])
    return np.einsum("ncp,nc->np", jac, residual) + l2 * theta


def hessian(params, x, l2: float) -> np.ndarray:
    """[p, p] Hessian of the mean loss over the examples x (labels do not enter it)."""
    jac, p = _jacobians_and_probs(params, x)
    out_hessian = np.einsum("nc,cd->ncd", p, np.eye(p.shape[1])) - np.einsum("nc,nd->ncd", p, p)
    return np.einsum("ncp,ncd,ndq->pq", jac, out_hessian, jac) / len(x) + l2 * np.eye(jac.shape[2])
