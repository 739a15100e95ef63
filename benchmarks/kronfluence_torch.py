"""A torch copy of `workbench.gpt.GPT` for `bench_kronfluence.py` (benchmarks only: the package never imports torch).

Same layer order and arithmetic as ours: token embedding + learned positions, pre-LayerNorm
blocks (x + attn(norm1(x)), x + down(gelu(up(norm2(x))))), a final LayerNorm and an untied head.
Attention as `nnx.MultiHeadAttention`: separate query/key/value/out projections with biases, the
query scaled by 1/sqrt(head_dim), causal mask (masked logits set to the dtype's most negative
value), softmax over keys computed in float32 whatever the params' dtype (as
`nnx.MultiHeadAttention` does through `jax.nn.dot_product_attention`, whose XLA path always casts
the logits to float32 for the softmax: our float64 GPT is float64 everywhere but there). LayerNorm epsilon 1e-6 (Flax's default; torch's is 1e-5), GELU with the
tanh approximation (`jax.nn.gelu`'s default).

The token embedding is an `nn.Linear(vocab, d_model, bias=False)` applied to one-hot tokens: the
same function as a lookup, and a module kronfluence tracks (it covers nn.Linear and nn.Conv2d
only). Its activation covariance is then diag(token frequencies), the factor our K-FAC uses for an
`nnx.Embed` (whose eigenbasis it takes to be the identity).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, d_model: int, num_heads: int, mlp_ratio: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(d_model, eps=1e-6)
        self.attn = nn.ModuleDict({name: nn.Linear(d_model, d_model) for name in ("query", "key", "value", "out")})
        self.norm2 = nn.LayerNorm(d_model, eps=1e-6)
        self.up = nn.Linear(d_model, mlp_ratio * d_model)
        self.down = nn.Linear(mlp_ratio * d_model, d_model)

    def attention(self, x):
        b, t, d = x.shape
        h = self.num_heads
        q, k, v = (self.attn[name](x).view(b, t, h, d // h) for name in ("query", "key", "value"))
        q = q / math.sqrt(d // h)
        logits = torch.einsum("bqhd,bkhd->bhqk", q, k)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        logits = logits.masked_fill(~causal, torch.finfo(logits.dtype).min)
        weights = torch.softmax(logits.float(), dim=-1).to(v.dtype)  # float32, as jax.nn.dot_product_attention
        return self.attn["out"](torch.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, d))

    def forward(self, x):
        x = x + self.attention(self.norm1(x))
        return x + self.down(F.gelu(self.up(self.norm2(x)), approximate="tanh"))


class TorchGPT(nn.Module):
    def __init__(self, vocab_size: int, seq_len: int, d_model: int, num_heads: int, num_layers: int,
                 mlp_ratio: int = 4):
        super().__init__()
        self.vocab_size = vocab_size
        self.embed = nn.Linear(vocab_size, d_model, bias=False)
        self.pos = nn.Parameter(torch.zeros(seq_len, d_model))
        self.blocks = nn.ModuleList([Block(d_model, num_heads, mlp_ratio) for _ in range(num_layers)])
        self.norm = nn.LayerNorm(d_model, eps=1e-6)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, tokens):
        x = self.embed(F.one_hot(tokens.long(), self.vocab_size).to(self.pos.dtype)) + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def _linear(module: nn.Linear, kernel, bias) -> None:
    kernel = np.asarray(kernel)
    fan_out = module.out_features
    module.weight.copy_(torch.tensor(kernel.reshape(-1, fan_out).T.copy()))
    if bias is not None:
        module.bias.copy_(torch.tensor(np.asarray(bias).reshape(-1)))


def gpt_from_params(params: dict, config: dict) -> TorchGPT:
    """A float64 `TorchGPT` holding our GPT params (a nested dict as `models.functional(GPT(...)).params`).

    LinearGeneral kernels [d, heads, head_dim] and [heads, head_dim, d] are flattened to [d, d]
    (in-features first) and transposed to torch's [out, in].
    """
    model = TorchGPT(**config).double()
    with torch.no_grad():
        model.embed.weight.copy_(torch.tensor(np.asarray(params["embed"]["embedding"]).T.copy()))
        model.pos.copy_(torch.tensor(np.asarray(params["pos"])))
        for i, block in enumerate(model.blocks):
            p = params["blocks"][i]
            for name in ("query", "key", "value", "out"):
                _linear(block.attn[name], p["attn"][name]["kernel"], p["attn"][name]["bias"])
            for name in ("up", "down"):
                _linear(getattr(block, name), p[name]["kernel"], p[name]["bias"])
            for name in ("norm1", "norm2"):
                getattr(block, name).weight.copy_(torch.tensor(np.asarray(p[name]["scale"])))
                getattr(block, name).bias.copy_(torch.tensor(np.asarray(p[name]["bias"])))
        model.norm.weight.copy_(torch.tensor(np.asarray(params["norm"]["scale"])))
        model.norm.bias.copy_(torch.tensor(np.asarray(params["norm"]["bias"])))
        _linear(model.head, params["head"]["kernel"], params["head"]["bias"])
    return model
