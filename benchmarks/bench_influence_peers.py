"""dattri (PyTorch, CPU) on the same digits logistic regression and the same ground truths.

Same float64 weights (our Newton optimum), same objective (mean cross-entropy + 0.5 * 0.01 * ||w||^2
per example), same LOO / LDS ground truths as `bench_influence.py`. dattri returns
[n_train, n_test]; its sign convention is compared by the sign of the correlation (we report the
correlation of whichever sign makes dattri's scores mean "helpful").

    PYTHONPATH=. python benchmarks/bench_influence_peers.py
Writes benchmarks/results/influence_peers.json and .md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from workbench import data, influence, models
from workbench.influence import evaluate as ev

jax.config.update("jax_enable_x64", True)
RESULTS = Path(__file__).parent / "results"
L2, N_TEST, NUM_REMOVED, NUM_SUBSETS = 0.01, 100, 200, 50


def main():
    import torch
    from dattri.algorithm.influence_function import (
        IFAttributorArnoldi,
        IFAttributorCG,
        IFAttributorExplicit,
        IFAttributorLiSSA,
    )
    from dattri.algorithm.tracin import TracInAttributor
    from dattri.task import AttributionTask

    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    train_set, test_full = data.load_digits(dtype=jnp.float64)
    test_set = test_full.take(np.arange(N_TEST))
    f = models.functional(models.LogisticRegression(64, 10, rngs=nnx.Rngs(0), param_dtype=jnp.float64), l2=L2)
    params, _ = ev.fit(f.loss_fn, f.params, train_set)
    removed = np.linspace(0, len(train_set) - 1, NUM_REMOVED).astype(int)
    loo = ev.loo(f.loss_fn, params, train_set, test_set, removed)
    lds_truth = ev.lds_ground_truth(f.loss_fn, params, train_set, test_set, jax.random.key(0), num_subsets=NUM_SUBSETS)

    model = torch.nn.Linear(64, 10).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor(np.asarray(params["linear"]["kernel"]).T))
        model.bias.copy_(torch.tensor(np.asarray(params["linear"]["bias"])))

    def loss_func(p, batch):
        x, y = batch
        if x.dim() == 1:  # dattri hands single examples to some attributors, batches to others
            x, y = x.unsqueeze(0), y.unsqueeze(0)
        logits = torch.func.functional_call(model, p, x)
        reg = sum((v**2).sum() for v in p.values())
        return torch.nn.functional.cross_entropy(logits, y) + 0.5 * L2 * reg

    task = AttributionTask(loss_func=loss_func, model=model, checkpoints=model.state_dict())
    to_ds = lambda d: torch.utils.data.TensorDataset(torch.tensor(np.asarray(d.x)), torch.tensor(np.asarray(d.y)).long())
    train_loader = torch.utils.data.DataLoader(to_ds(train_set), batch_size=len(train_set), shuffle=False)
    test_loader = torch.utils.data.DataLoader(to_ds(test_set), batch_size=N_TEST, shuffle=False)

    contenders = {
        "explicit": lambda: IFAttributorExplicit(task, regularization=0.0),
        "cg": lambda: IFAttributorCG(task, max_iter=100, tol=1e-10, regularization=0.0),
        "lissa": lambda: IFAttributorLiSSA(task, batch_size=len(train_set), recursion_depth=1000, damping=0.0, scaling=1.0),
        "arnoldi_k200": lambda: IFAttributorArnoldi(task, proj_dim=200, max_iter=300, regularization=0.0),
        "tracin_1ckpt": lambda: TracInAttributor(task, weight_list=torch.tensor([1.0]), normalized_grad=False),
    }
    ours = {
        "explicit": lambda: influence.make("exact", f.loss_fn, params, train_set),
        "cg": lambda: influence.make("cg", f.loss_fn, params, train_set),
        "lissa": lambda: influence.make("lissa", f.loss_fn, params, train_set, depth=1000),
        "arnoldi_k200": lambda: influence.make("arnoldi", f.loss_fn, params, train_set, k=200),
        "tracin_1ckpt": lambda: influence.make("tracin", f.loss_fn, params, train_set, checkpoints={0: params}, learning_rates=1.0),
    }
    rows = []
    for name, build in contenders.items():
        row = {"method": name}
        try:
            start = time.perf_counter()
            attributor = build()
            if not isinstance(attributor, TracInAttributor):  # TracIn has nothing to cache
                attributor.cache(train_loader)
            scores = attributor.attribute(train_loader, test_loader).detach().numpy().T  # [n_test, n_train]
            row["dattri_s"] = time.perf_counter() - start
            sign = np.sign(np.nanmean(ev.pearson_rows(scores[:, removed], loo.actual))) or 1.0
            scores = sign * scores
            row["dattri_sign"] = int(sign)
            row["dattri_loo"] = ev.loo_correlation(scores, loo)["pearson"]
            row["dattri_lds"] = ev.lds(scores, lds_truth).mean
        except Exception as err:  # a peer failing is a result too
            row["dattri_error"] = f"{type(err).__name__}: {str(err)[:200]}"
        start = time.perf_counter()
        s = np.asarray(jax.block_until_ready(ours[name]().scores(test_set)))
        row["ours_first_s"] = time.perf_counter() - start
        start = time.perf_counter()
        s = np.asarray(jax.block_until_ready(ours[name]().scores(test_set)))
        row["ours_warm_s"] = time.perf_counter() - start
        row["ours_loo"] = ev.loo_correlation(s, loo)["pearson"]
        row["ours_lds"] = ev.lds(s, lds_truth).mean
        rows.append(row)
        print(row, flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "influence_peers.json").write_text(json.dumps({"rows": rows, "n_train": len(train_set), "n_test": N_TEST}, indent=2) + "\n")
    md = ["# dattri vs workbench.influence, digits logistic regression (float64, 1 CPU thread for torch)", "",
          f"{len(train_set)} training / {N_TEST} test points; LOO Pearson over {NUM_REMOVED} removals, LDS over "
          f"{NUM_SUBSETS} half-data models. dattri time: cache + attribute; ours: build + score (first call "
          "includes compilation; warm reuses it).", "", ev.markdown_table(rows)]
    (RESULTS / "influence_peers.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
