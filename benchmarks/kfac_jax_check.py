"""Cross-check of `workbench.curvature.kfac` against kfac-jax (DeepMind's K-FAC optimizer library).

kfac-jax is not a dependency. To run this check, install it into a scratch folder beside the
project's environment (it needs distrax, dm-tree, immutabledict, chex and tensorflow-probability;
tensorflow-probability 0.25 does not import with JAX 0.10, tfp-nightly does):

    python -m pip install --no-deps --target /tmp/kfacjax kfac-jax distrax dm-tree immutabledict chex \
        tfp-nightly toolz decorator cloudpickle gast

kfac-jax 0.0.8 also needs a one-line change for JAX 0.10 (`Primitive.get_bind_params` now returns
the params alone): in kfac_jax/_src/tag_graph_matcher.py, `eval_jaxpr_eqn`,

    res = eqn.primitive.get_bind_params(eqn.params)
    subfuns, bind_params = res if isinstance(res, tuple) else ([], res)

Then `PYTHONPATH=.:/tmp/kfacjax python benchmarks/kfac_jax_check.py` fits both on a trained digits
MLP (64-32-10, 200 examples) with the exact expectation over labels (kfac-jax's "ggn_exact" and
"fisher_exact", workbench's fisher="ggn") and prints the relative difference of each layer's
A (x) S and of A and S themselves (measured: ~1e-15, the same factors).
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import kfac_jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from workbench import data, models, train  # noqa: E402
from workbench.curvature import kfac  # noqa: E402


def main() -> None:
    train_full, _ = data.load_digits(seed=0, dtype=jnp.float64)
    train_data = train_full.take(jnp.arange(200))
    fn = models.functional(models.MLP(64, [32], 10, rngs=nnx.Rngs(0), param_dtype=jnp.float64), l2=1e-3)
    params = train.train(fn, fn.params, train_data, None, optimizer=optax.adam(3e-3), num_steps=500,
                         progress=False).params

    def loss_fn(params, batch):
        x, y = batch
        logits = fn.predict_fn(params, x)
        kfac_jax.register_softmax_cross_entropy_loss(logits, y)
        return jnp.mean(fn.output_loss_fn(logits, y))

    batch = (train_data.x, train_data.y)
    estimator = kfac_jax.BlockDiagonalCurvature(func=loss_fn)
    state = estimator.init(jax.random.key(0), (params, batch), exact_powers_to_cache=None,
                           approx_powers_to_cache=None)
    ours = kfac.fit(fn, params, train_data, fisher="ggn", correct=False)
    for mode in ("ggn_exact", "fisher_exact"):
        fitted = estimator.update_curvature_matrix_estimate(
            state, ema_old=0.0, ema_new=1.0, identity_weight=0.0, batch_size=len(train_data),
            rng=jax.random.key(1), func_args=(params, batch), estimation_mode=mode)
        for block_state in fitted.blocks_states:
            a, s = (np.asarray(f.value) for f in block_state.factors)
            for name, lf in ours.layers.items():
                if lf.activation.shape == a.shape and lf.gradient.shape == s.shape:
                    mine = np.kron(np.asarray(lf.activation), np.asarray(lf.gradient))
                    print(f"{mode} {name}: |A(x)S - ours| / |ours| = "
                          f"{np.linalg.norm(np.kron(a, s) - mine) / np.linalg.norm(mine):.2e}, "
                          f"A {np.linalg.norm(a - lf.activation) / np.linalg.norm(lf.activation):.2e}, "
                          f"S {np.linalg.norm(s - lf.gradient) / np.linalg.norm(lf.gradient):.2e}")


if __name__ == "__main__":
    main()
