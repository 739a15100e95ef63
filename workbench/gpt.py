"""A character-level GPT family: one decoder at named sizes from about 1M to 30M parameters.

`GPT(config)` is a decoder-only transformer as in nanoGPT: token and position embeddings, a
stack of pre-LayerNorm causal self-attention blocks with MLPs (`models.TransformerBlock`, the
block `models.TinyTransformer` uses), a final LayerNorm and a linear head (no weight tying, no
dropout, so its `models.functional` carries no state and trains on its plain `loss_fn`: the
cross-entropy averaged over every position of every sequence). It is initialised as GPT-2 is:
N(0, 0.02^2) weights and embeddings, and the two projections that write into the residual
stream scaled down by sqrt(2 num_layers), so the stream's variance does not grow with depth.

`GPT_SIZES` names four widths and depths at nanoGPT's shakespeare-char scales whose parameter
counts lie within 5% of their names for the vocabulary of `data.load_corpus` (100 characters)
and a context of 128 characters (within 9% for any context of 64 to 512 characters):

| size | d_model | heads | layers | params (vocab 100, seq_len 128) |
|------|---------|-------|--------|---------------------------------|
| 1M   | 128     | 4     | 5      | 1.03M                           |
| 3M   | 224     | 7     | 5      | 3.10M                           |
| 10M  | 320     | 5     | 8      | 9.97M                           |
| 30M  | 512     | 8     | 9      | 28.5M                           |

`count_params(config)` counts without building the model (`nnx.eval_shape`), and
`generate(fn, params, prompt_ids, key, num_tokens)` continues a prompt inside one compiled
`lax.fori_loop`, greedily or by sampling.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from workbench.core.numerics import check_key, check_positive_int
from workbench.models import Functional, TransformerBlock

PyTree = Any
INIT_STD = 0.02
"""GPT-2's standard deviation of the initial weights and embeddings."""


class GPTConfig(NamedTuple):
    """The shape of a `GPT`: vocabulary, context, width, heads, depth and MLP ratio.

    `vocab_size` token ids, contexts of at most `seq_len` tokens, a residual stream of
    `d_model` features split over `num_heads` heads (d_model a multiple of num_heads),
    `num_layers` blocks whose MLPs are `mlp_ratio` times as wide as the stream.
    """

    vocab_size: int
    seq_len: int
    d_model: int
    num_heads: int
    num_layers: int
    mlp_ratio: int = 4


GPT_SIZES = {
    "1M": {"d_model": 128, "num_heads": 4, "num_layers": 5},
    "3M": {"d_model": 224, "num_heads": 7, "num_layers": 5},
    "10M": {"d_model": 320, "num_heads": 5, "num_layers": 8},
    "30M": {"d_model": 512, "num_heads": 8, "num_layers": 9},
}
"""Width, heads and depth of each named size; the names are parameter counts (the module's table,
`gpt_config(size, vocab_size, seq_len)` completes a size into a `GPTConfig`)."""


def gpt_config(size: str, vocab_size: int, seq_len: int) -> GPTConfig:
    """The `GPTConfig` of a named size for a vocabulary and a context length.

    Args:
        size: a key of `GPT_SIZES` ("1M", "3M", "10M", "30M").
        vocab_size: the number of token ids (`len(corpus.vocab)`).
        seq_len: the longest context, in tokens.

    Returns:
        The `GPTConfig` (mlp_ratio 4).

    Raises:
        ValueError: an unknown size, or `vocab_size` / `seq_len` not a positive int.
    """
    if size not in GPT_SIZES:
        raise ValueError(f"size must be one of {list(GPT_SIZES)}, got {size!r}")
    return check_config(GPTConfig(vocab_size, seq_len, **GPT_SIZES[size]))


def check_config(config: GPTConfig) -> GPTConfig:
    """`config` if it describes a buildable `GPT`, else a ValueError naming the bad field.

    Args:
        config: the `GPTConfig`.

    Returns:
        The config with its fields as Python ints.

    Raises:
        TypeError: `config` is not a `GPTConfig`.
        ValueError: a field that is not a positive int, or `d_model` not a multiple of
            `num_heads`.
    """
    if not isinstance(config, GPTConfig):
        raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
    config = GPTConfig(*(check_positive_int(f"config.{name}", value) for name, value in config._asdict().items()))
    if config.d_model % config.num_heads:
        raise ValueError(f"config.d_model ({config.d_model}) must be a multiple of config.num_heads "
                         f"({config.num_heads})")
    return config


class GPT(nnx.Module):
    """A decoder-only character transformer: embeddings, causal pre-LayerNorm blocks, a head.

    Input: int token ids [batch, length] with length <= `config.seq_len`; output: logits
    [batch, length, vocab_size], position t depending on tokens 0..t only. Params are named as
    `models.TinyTransformer`'s: embed, pos, blocks, norm, head.

    Args:
        config: the `GPTConfig` (`gpt_config(size, ...)` for a named size).
        rngs: the Flax NNX random streams drawing the initial params.
        param_dtype: the dtype of the params (float32; float64 for reference checks).

    Raises:
        ValueError: a bad `config` (see `check_config`).
    """

    def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        config = check_config(config)
        self.config = config
        init = nnx.initializers.normal(INIT_STD)
        residual_init = nnx.initializers.normal(INIT_STD / math.sqrt(2 * config.num_layers))
        self.embed = nnx.Embed(config.vocab_size, config.d_model, rngs=rngs, param_dtype=param_dtype,
                               embedding_init=init)
        self.pos = nnx.Param(init(rngs.params(), (config.seq_len, config.d_model), param_dtype))
        self.blocks = nnx.List([
            TransformerBlock(config.d_model, config.num_heads, config.mlp_ratio, rngs=rngs, param_dtype=param_dtype,
                             kernel_init=init, residual_init=residual_init)
            for _ in range(config.num_layers)
        ])
        self.norm = nnx.LayerNorm(config.d_model, rngs=rngs, param_dtype=param_dtype)
        self.head = nnx.Linear(config.d_model, config.vocab_size, rngs=rngs, param_dtype=param_dtype,
                               kernel_init=init)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """The next-token logits at every position.

        Args:
            tokens: int token ids [batch, length], length <= `config.seq_len`.

        Returns:
            Logits [batch, length, vocab_size].

        Raises:
            ValueError: a sequence longer than the model's context.
        """
        length = tokens.shape[1]
        if length > self.config.seq_len:
            raise ValueError(f"tokens hold {length} positions, more than the model's seq_len {self.config.seq_len}")
        x = self.embed(tokens) + self.pos[...][:length]
        mask = nnx.make_causal_mask(tokens)  # position t attends to positions <= t
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.norm(x))


def count_params(config: GPTConfig) -> int:
    """The number of parameters of `GPT(config)`, counted without building it (`nnx.eval_shape`).

    For mlp_ratio r it equals num_layers (4 + 2r) d^2 + num_layers (9 + r) d
    + d (2 vocab_size + seq_len + 2) + vocab_size, with d = d_model.

    Args:
        config: the `GPTConfig`.

    Returns:
        The total number of scalar parameters.

    Raises:
        ValueError: a bad `config`.
    """
    config = check_config(config)
    abstract = nnx.eval_shape(lambda: GPT(config, rngs=nnx.Rngs(0)))
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def generate(fn: Functional | Callable, params: PyTree, prompt_ids, key: jax.Array | None, num_tokens: int, *,
             temperature: float = 1.0, context_len: int | None = None) -> jax.Array:
    """Continue a prompt by `num_tokens` tokens, each drawn from the model's next-token logits.

    Token i is drawn from softmax(logits / temperature) at the last position of the context
    (the last `context_len` tokens so far), with key `fold_in(key, i)`; temperature 0 takes the
    arg-max instead (greedy, no key needed). All steps run in one compiled `lax.fori_loop`
    (compiled once per model, prompt length, `num_tokens`, context and greedy/sampled): each
    step runs the model over a window of `context_len` tokens, whose positions after the last
    token hold padding that a causal model never reads.

    Args:
        fn: a causal model as a `models.Functional` (`functional(GPT(...))`) or its
            `predict_fn(params, tokens [1, length]) -> logits [1, length, vocab]`.
        params: the model's params.
        prompt_ids: int token ids [prompt_length] (`data.encode(prompt, vocab)`), at least one.
        key: a PRNG key for sampling; None only with temperature 0.
        num_tokens: how many tokens to generate (>= 1).
        temperature: the softmax temperature (> 0), or 0 for greedy decoding.
        context_len: the most tokens the model reads at once (default: the length of the
            positional table `params["pos"]`, as for `GPT` and `models.TinyTransformer`).

    Returns:
        int32 ids [num_tokens] of the continuation (the prompt not included).

    Raises:
        ValueError: an empty or non-integer prompt, ids outside the model's vocabulary, a negative
            or non-finite temperature, a missing key for sampling, or no `context_len` for a model
            without a `pos` table.
    """
    predict_fn = fn.predict_fn if isinstance(fn, Functional) else fn
    prompt = np.asarray(prompt_ids)
    if prompt.ndim != 1 or prompt.size == 0 or not np.issubdtype(prompt.dtype, np.integer):
        raise ValueError(f"prompt_ids must be a non-empty one-dimensional array of token ids, got shape "
                         f"{prompt.shape} and dtype {prompt.dtype}")
    vocab_size = _vocab_size(params)
    if prompt.min() < 0 or (vocab_size is not None and prompt.max() >= vocab_size):
        raise ValueError(f"prompt_ids must lie in [0, {vocab_size}), got ids in [{prompt.min()}, {prompt.max()}]")
    num_tokens = check_positive_int("num_tokens", num_tokens)
    if context_len is None:
        if not (isinstance(params, dict) and "pos" in params):
            raise ValueError("context_len is needed: params hold no positional table params['pos'] to read it from")
        context_len = int(params["pos"].shape[0])
    context_len = check_positive_int("context_len", context_len)
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be finite and >= 0 (0: greedy), got {temperature}")
    greedy = temperature == 0
    if not greedy:
        if key is None:
            raise ValueError("sampling at temperature > 0 draws from key: pass a PRNG key (or temperature=0)")
        key = check_key(key)
    else:
        key = jax.random.key(0)  # read by no one: greedy decoding draws nothing
    return _continue(predict_fn, params, jnp.asarray(prompt, jnp.int32), key, jnp.asarray(temperature or 1.0),
                     num_tokens, context_len, greedy)


def _vocab_size(params) -> int | None:
    try:
        return int(params["embed"]["embedding"].shape[0])
    except (KeyError, TypeError, IndexError):
        return None


@partial(jax.jit, static_argnames=("predict_fn", "num_tokens", "context_len", "greedy"))
def _continue(predict_fn, params, prompt, key, temperature, num_tokens, context_len, greedy):
    prompt_len = prompt.shape[0]
    buffer = jnp.zeros(max(prompt_len + num_tokens, context_len), jnp.int32).at[:prompt_len].set(prompt)

    def one_token(i, buffer):
        length = prompt_len + i  # tokens so far; the next goes to index `length`
        start = jnp.maximum(length - context_len, 0)
        window = jax.lax.dynamic_slice(buffer, (start,), (context_len,))
        logits = predict_fn(params, window[None])[0, length - 1 - start]
        if greedy:
            token = jnp.argmax(logits)
        else:
            token = jax.random.categorical(jax.random.fold_in(key, i), logits / temperature.astype(logits.dtype))
        return buffer.at[length].set(token.astype(jnp.int32))

    buffer = jax.lax.fori_loop(0, num_tokens, one_token, buffer)
    return buffer[prompt_len:prompt_len + num_tokens]
