"""PyTorch peers for `bench_influence_peers.py`: dattri, kronfluence and traker on our weights.

Every runner takes a `Problem` (our float64 params copied into an equal torch module, the same
objective: mean cross-entropy + 0.5 * l2 * ||params||^2) and returns
(scores [n_test, n_train] as numpy, seconds for build + cache + attribute).

dattri's LiSSA casts every data tensor to float32 in its collate function
(`IFAttributorLiSSA.lissa_collate_fn`, `sampled_input[i].float()`, dattri/algorithm/
influence_function.py), labels included; a float64 model then fails in `F.linear` with
"expected m1 and m2 to have the same dtype". Our loss function casts inputs back to the model's
dtype and labels to int64, which is all it needs.
"""

from __future__ import annotations

import copy
import tempfile
import time
from typing import NamedTuple

import numpy as np


class Problem(NamedTuple):
    name: str
    modules: list  # one torch module per ensemble member / checkpoint (float64, our weights)
    l2: float
    train: tuple  # (x [n, 64] float64 np, y [n] int np)
    test: tuple


def torch_module(params: dict):
    """An nn.Linear or an nn.Sequential(Linear, Tanh, ..., Linear) holding our params (float64)."""
    import torch

    if "linear" in params:
        layers = [params["linear"]]
    else:
        layers = [params["layers"][i] for i in sorted(params["layers"])]
    mods = []
    for i, layer in enumerate(layers):
        kernel = np.asarray(layer["kernel"])
        lin = torch.nn.Linear(*kernel.shape).double()
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(kernel.T))
            lin.bias.copy_(torch.tensor(np.asarray(layer["bias"])))
        mods += [lin] + ([torch.nn.Tanh()] if i < len(layers) - 1 else [])
    return mods[0] if len(mods) == 1 else torch.nn.Sequential(*mods)


def _tensors(split):
    import torch

    return torch.tensor(np.asarray(split[0])), torch.tensor(np.asarray(split[1])).long()


def _loaders(problem, batch_size=None):
    import torch

    out = []
    for split in (problem.train, problem.test):
        ds = torch.utils.data.TensorDataset(*_tensors(split))
        out.append(torch.utils.data.DataLoader(ds, batch_size=batch_size or len(ds), shuffle=False))
    return out


def _objective(model, l2):
    """dattri loss: mean cross-entropy + 0.5 l2 ||p||^2 on a batch or on one example."""
    import torch

    def loss(p, batch):
        x, y = batch
        if x.dim() == 1:  # per-example gradients get single examples
            x, y = x.unsqueeze(0), y.unsqueeze(0)
        x, y = x.to(torch.float64), y.long()  # dattri's LiSSA collate casts both to float32
        logits = torch.func.functional_call(model, p, x)
        return torch.nn.functional.cross_entropy(logits, y) + 0.5 * l2 * sum((v**2).sum() for v in p.values())

    return loss


def _margin(model):
    """TRAK's output: log p_y - log(1 - p_y), on one example (dattri's documented recipe)."""
    import torch

    def margin(p, batch):
        x, y = batch
        logp = -torch.nn.functional.cross_entropy(torch.func.functional_call(model, p, x.unsqueeze(0)), y.unsqueeze(0))
        return logp - torch.log(1 - torch.exp(logp))

    def probability(p, batch):
        x, y = batch
        return torch.exp(-torch.nn.functional.cross_entropy(torch.func.functional_call(model, p, x.unsqueeze(0)), y.unsqueeze(0)))

    return margin, probability


def dattri(problem: Problem, method: str, **opts):
    """method in explicit, cg, lissa, arnoldi, tracin, trak. Checkpoints = problem.modules."""
    import torch
    from dattri.algorithm import influence_function as dif
    from dattri.algorithm.tracin import TracInAttributor
    from dattri.algorithm.trak import TRAKAttributor
    from dattri.task import AttributionTask

    model = problem.modules[-1]
    train_loader, test_loader = _loaders(problem)
    start = time.perf_counter()
    if method == "trak":
        margin, probability = _margin(model)
        task = AttributionTask(loss_func=margin, model=model, checkpoints=[m.state_dict() for m in problem.modules])
        att = TRAKAttributor(task, probability, projector_kwargs={"proj_dim": opts["dim"], "proj_type": "normal"},
                             regularization=opts.get("regularization", 0.0))
        att.cache(train_loader)
        scores = att.attribute(test_loader)  # TRAK takes the test loader first
    elif method == "tracin":
        task = AttributionTask(loss_func=_objective(model, problem.l2), model=model,
                               checkpoints=[m.state_dict() for m in problem.modules])
        # dattri's TracIn projects gradients to 512 dims unless told otherwise: ask for identity
        p = sum(t.numel() for t in model.parameters())
        att = TracInAttributor(task, weight_list=torch.tensor(opts["weights"], dtype=torch.float64), normalized_grad=False,
                               projector_kwargs={"proj_type": "identity", "proj_dim": p})
        scores = att.attribute(train_loader, test_loader)
    else:
        task = AttributionTask(loss_func=_objective(model, problem.l2), model=model, checkpoints=model.state_dict())
        cls = {"explicit": dif.IFAttributorExplicit, "cg": dif.IFAttributorCG, "lissa": dif.IFAttributorLiSSA,
               "arnoldi": dif.IFAttributorArnoldi}[method]
        att = cls(task, **opts)
        att.cache(train_loader)
        # torch.func transforms ignore an outer no_grad; without it dattri's LiSSA keeps the
        # autograd graph of every recursion step (memory grows ~13 MB per step for 10 test points)
        with torch.no_grad():
            scores = att.attribute(train_loader, test_loader)
    scores = scores.detach().numpy().T  # dattri: [n_train, n_test]
    return scores, time.perf_counter() - start


def kronfluence(problem: Problem, strategy: str = "ekfac", damping: float = 0.0):
    """kronfluence's EK-FAC / K-FAC (float64 everywhere), in a temporary output directory.

    kronfluence models the Gauss-Newton/Fisher of the summed loss without the L2 term, so the
    damping passed is l2 + the damping the other estimators add to the Hessian.
    """
    import torch
    import torch.nn.functional as F
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task

    class Classification(Task):
        def compute_train_loss(self, batch, model, sample=False):
            x, y = batch
            logits = model(x)
            if sample:  # the true Fisher: labels drawn from the model
                with torch.no_grad():
                    y = torch.multinomial(torch.softmax(logits.detach(), -1), 1).flatten()
            return F.cross_entropy(logits, y, reduction="sum")

        def compute_measurement(self, batch, model):
            x, y = batch
            return F.cross_entropy(model(x), y, reduction="sum")

    f64 = torch.float64
    torch.manual_seed(0)
    start = time.perf_counter()
    task = Classification()
    model = copy.deepcopy(problem.modules[-1])
    if isinstance(model, torch.nn.Linear):  # prepare_model recurses forever on a bare Linear root
        model = torch.nn.Sequential(model)
    model = prepare_model(model, task)
    train_ds = torch.utils.data.TensorDataset(*_tensors(problem.train))
    test_ds = torch.utils.data.TensorDataset(*_tensors(problem.test))
    with tempfile.TemporaryDirectory() as tmp:
        analyzer = Analyzer(f"{problem.name}_{strategy}", model, task, cpu=True, output_dir=tmp, disable_tqdm=True,
                            log_level=40)
        factor_args = FactorArguments(strategy=strategy, activation_covariance_dtype=f64,
                                      gradient_covariance_dtype=f64, eigendecomposition_dtype=f64,
                                      per_sample_gradient_dtype=f64, lambda_dtype=f64)
        analyzer.fit_all_factors("factors", train_ds, per_device_batch_size=len(train_ds), factor_args=factor_args)
        score_args = ScoreArguments(damping_factor=damping, per_sample_gradient_dtype=f64, precondition_dtype=f64,
                                    score_dtype=f64, query_gradient_svd_dtype=f64)
        analyzer.compute_pairwise_scores("scores", "factors", query_dataset=test_ds, train_dataset=train_ds,
                                         per_device_query_batch_size=len(test_ds),
                                         per_device_train_batch_size=len(train_ds), score_args=score_args)
        scores = analyzer.load_pairwise_scores("scores")["all_modules"].numpy()  # [n_test, n_train]
    return scores, time.perf_counter() - start


def traker(problem: Problem, dim: int, lambda_reg: float = 0.0):
    """trak.TRAKer on CPU, full precision, Gaussian BasicProjector of dimension `dim`, one model
    per entry of problem.modules (the ensemble)."""
    import torch
    from trak import TRAKer
    from trak.projectors import BasicProjector, ProjectionType

    model = copy.deepcopy(problem.modules[-1])
    p = sum(t.numel() for t in model.parameters())
    (xtr, ytr), (xte, yte) = _tensors(problem.train), _tensors(problem.test)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        projector = BasicProjector(grad_dim=p, proj_dim=dim, seed=0, proj_type=ProjectionType.normal,
                                   device="cpu", dtype=torch.float64)
        tr = TRAKer(model=model, task="image_classification", train_set_size=len(xtr), save_dir=tmp,
                    device="cpu", projector=projector, proj_dim=dim,
                    use_half_precision=False, lambda_reg=lambda_reg, logging_level=40)
        for model_id, m in enumerate(problem.modules):
            tr.load_checkpoint(m.state_dict(), model_id=model_id)
            tr.featurize(batch=(xtr, ytr), num_samples=len(xtr))
        tr.finalize_features()
        for model_id, m in enumerate(problem.modules):
            tr.start_scoring_checkpoint(exp_name="test", checkpoint=m.state_dict(), model_id=model_id,
                                        num_targets=len(xte))
            tr.score(batch=(xte, yte), num_samples=len(xte))
        scores = np.asarray(tr.finalize_scores(exp_name="test")).T  # traker: [n_train, n_test]
    return scores, time.perf_counter() - start
