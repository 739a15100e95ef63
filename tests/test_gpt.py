"""The char-level GPT family (`workbench.gpt`) and its corpus (`data.load_corpus`): causality,
named sizes, a split that does not leak, encoding, errors, and a tiny GPT that learns from
context where a shuffled-token control cannot."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from workbench import data, gpt, models, train


@pytest.fixture(scope="module")
def corpus():
    return data.load_corpus(seq_len=32)


@pytest.fixture(scope="module")
def tiny():
    """A one-block float64 GPT over 40 tokens with a context of 16, as a Functional."""
    config = gpt.GPTConfig(vocab_size=40, seq_len=16, d_model=32, num_heads=2, num_layers=1)
    return models.functional(gpt.GPT(config, rngs=nnx.Rngs(0), param_dtype=jnp.float64))


@pytest.mark.standard_promotion  # flax's LayerNorm promotes float64 statistics with float32
def test_logits_depend_on_past_tokens_only(tiny, key):
    assert all(a.dtype == jnp.float64 for a in jax.tree.leaves(tiny.params))
    predict = jax.jit(tiny.predict_fn)
    tokens = jax.random.randint(key, (2, 16), 0, 40)
    logits = predict(tiny.params, tokens)
    assert logits.shape == (2, 16, 40) and logits.dtype == jnp.float64
    future = predict(tiny.params, tokens.at[:, 8].set((tokens[:, 8] + 1) % 40))
    np.testing.assert_allclose(future[:, :8], logits[:, :8], rtol=0, atol=1e-12)  # the future is never read
    assert np.all(np.abs(future[:, 8:] - logits[:, 8:]).max(axis=-1) > 1e-6)
    past = predict(tiny.params, tokens.at[:, 3].set((tokens[:, 3] + 1) % 40))
    np.testing.assert_allclose(past[:, :3], logits[:, :3], rtol=0, atol=1e-12)
    assert np.all(np.abs(past[:, 4:] - logits[:, 4:]).max(axis=-1) > 1e-6)  # later positions read it
    assert optax.tree.size(tiny.params) == gpt.count_params(gpt.GPTConfig(40, 16, 32, 2, 1))  # built = counted
    model = gpt.GPT(gpt.GPTConfig(40, 16, 32, 2, 1), rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    with pytest.raises(ValueError, match="more than the model's seq_len 16"):
        model(jnp.zeros((1, 17), jnp.int32))


def _closed_form(config):
    d, r, v, layers = config.d_model, config.mlp_ratio, config.vocab_size, config.num_layers
    return layers * (4 + 2 * r) * d**2 + layers * (9 + r) * d + d * (2 * v + config.seq_len + 2) + v


def test_named_sizes_are_within_ten_percent_of_their_names(corpus):
    # the abstract count is the closed form of the module docstring, at any mlp_ratio
    config = gpt.GPTConfig(len(corpus.vocab), 32, d_model=48, num_heads=3, num_layers=2, mlp_ratio=3)
    assert gpt.count_params(config) == _closed_form(config)
    for size, target in (("1M", 1e6), ("3M", 3e6), ("10M", 10e6), ("30M", 30e6)):
        for seq_len in (64, 128, 256, 512):
            bound = 0.05 if seq_len == 128 else 0.09  # the module docstring's table
            assert abs(_closed_form(gpt.gpt_config(size, len(corpus.vocab), seq_len)) / target - 1) < bound
    for size in ("1M", "30M"):  # abstract: no 30M model is built
        config = gpt.gpt_config(size, len(corpus.vocab), 128)
        assert gpt.count_params(config) == _closed_form(config)


def test_tiny_transformer_params_keep_their_structure():
    """TinyTransformer shares GPT's block: its params keep their names and shapes."""
    model = nnx.eval_shape(lambda: models.TinyTransformer(50, 16, rngs=nnx.Rngs(0)))
    shapes = jax.tree.map(lambda a: a.shape, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    assert shapes["blocks"][0]["up"]["kernel"] == (32, 128) and shapes["pos"] == (16, 32)
    assert sorted(shapes["blocks"][0]) == ["attn", "down", "norm1", "norm2", "up"]
    assert sum(math.prod(s) for s in jax.tree.leaves(shapes, is_leaf=lambda s: isinstance(s, tuple))) == 16530


def test_split_shares_no_character_with_training():
    """Documents of distinct characters: a token id names one position of the text, so a
    validation id seen in training would be a leak."""
    documents = ["".join(chr(0x4E00 + 1000 * j + i) for i in range(n)) for j, n in enumerate((400, 250, 600))]
    corpus = data.text_corpus(documents, seq_len=8, stride=3, validation_fraction=0.2)
    train_ids = set(np.ravel(corpus.train.x)) | set(np.ravel(corpus.train.y))
    validation_ids = set(np.ravel(corpus.validation.x)) | set(np.ravel(corpus.validation.y))
    assert not train_ids & validation_ids
    held_out = "".join(d[len(d) - round(0.2 * len(d)):] for d in documents)
    assert validation_ids <= set(np.asarray(data.encode(held_out, corpus.vocab)))
    np.testing.assert_array_equal(corpus.train.x[:, 1:], corpus.train.y[:, :-1])
    np.testing.assert_array_equal(corpus.train.x[1, :5], corpus.train.x[0, 3:8])  # stride 3
    assert corpus.validation.x.shape == ((250 - 9) // 3 + 1, 8)  # 80 + 50 + 120 held out


def test_corpus_is_deterministic_and_round_trips(corpus):
    again = data.load_corpus(seq_len=32)
    assert again.vocab == corpus.vocab and len(corpus.vocab) == 100
    for a, b in ((again.train, corpus.train), (again.validation, corpus.validation)):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
    assert corpus.train.x.dtype == jnp.int32 and corpus.train.x.shape[1] == 32
    assert 0.08 < len(corpus.validation) / (len(corpus.train) + len(corpus.validation)) < 0.12
    text = data.decode(corpus.validation.x[5], corpus.vocab)
    assert len(text) == 32 and data.decode(data.encode(text, corpus.vocab), corpus.vocab) == text
    np.testing.assert_array_equal(data.encode(text, corpus.vocab), corpus.validation.x[5])
    documents = data.corpus_documents()
    assert len(documents) == len(data.CORPUS_MODULES) + len(data.CORPUS_DOCSTRING_MODULES)
    assert "Return the absolute value of the argument." in documents[-len(data.CORPUS_DOCSTRING_MODULES)]
    assert data.encode("", corpus.vocab).shape == (0,) and data.decode([], corpus.vocab) == ""


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="seq_len must be an int >= 2"):
        data.load_corpus(seq_len=1)
    with pytest.raises(ValueError, match="unknown module 'no_such_module_xyz'"):
        data.load_corpus(modules=("textwrap", "no_such_module_xyz"))
    with pytest.raises(ValueError, match="no Python source"):
        data.corpus_documents(modules=("math",), docstring_modules=())
    for fraction in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="validation_fraction must lie in"):
            data.text_corpus(["abcdefghijklmnop" * 10], seq_len=4, validation_fraction=fraction)
    with pytest.raises(ValueError, match="validation text has 8 characters, fewer than seq_len"):
        data.text_corpus(["abcdefgh" * 10], seq_len=10, validation_fraction=0.1)
    with pytest.raises(ValueError, match=r"outside the vocabulary: 'XZ'"):
        data.encode("abXcZa", "abc")
    with pytest.raises(ValueError, match="repeat"):
        data.encode("ab", "aba")
    with pytest.raises(ValueError, match=r"ids must lie in \[0, len\(vocab\) = 3\)"):
        data.decode([0, 3], "abc")
    with pytest.raises(ValueError, match="size must be one of"):
        gpt.gpt_config("2M", 100, 128)
    with pytest.raises(ValueError, match="multiple of config.num_heads"):
        gpt.GPT(gpt.GPTConfig(10, 8, d_model=30, num_heads=4, num_layers=1), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="config.num_layers must be an int >= 1"):
        gpt.count_params(gpt.GPTConfig(10, 8, d_model=32, num_heads=4, num_layers=0))


@pytest.mark.standard_promotion  # flax's LayerNorm (float64)
def test_generate_is_the_step_by_step_arg_max_and_samples_reproducibly(tiny, key):
    predict = jax.jit(tiny.predict_fn)
    prompt = jnp.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7], jnp.int32)
    greedy = gpt.generate(tiny, tiny.params, prompt, None, 12, temperature=0)
    tokens = list(np.asarray(prompt))
    for _ in range(12):  # the context slides past the model's 16 positions after two tokens
        tokens.append(int(jnp.argmax(predict(tiny.params, jnp.asarray(tokens[-16:])[None])[0, -1])))
    np.testing.assert_array_equal(greedy, tokens[14:])
    sampled = gpt.generate(tiny, tiny.params, prompt, key, 12, temperature=1.5)
    assert sampled.shape == (12,) and sampled.dtype == jnp.int32 and 0 <= int(sampled.min()) <= int(sampled.max()) < 40
    assert not np.array_equal(sampled, greedy)
    np.testing.assert_array_equal(sampled, gpt.generate(tiny.predict_fn, tiny.params, prompt, key, 12, temperature=1.5))
    cold = gpt.generate(tiny, tiny.params, prompt, key, 12, temperature=1e-6)  # sampling tends to the arg-max
    np.testing.assert_array_equal(cold, greedy)
    with pytest.raises(ValueError, match="pass a PRNG key"):
        gpt.generate(tiny, tiny.params, prompt, None, 3)
    with pytest.raises(ValueError, match=r"prompt_ids must lie in \[0, 40\)"):
        gpt.generate(tiny, tiny.params, jnp.array([40]), key, 3)
    with pytest.raises(ValueError, match="temperature must be finite"):
        gpt.generate(tiny, tiny.params, prompt, key, 3, temperature=-1.0)


@pytest.mark.standard_promotion  # optax's Adam
def test_tiny_gpt_learns_from_context_and_a_shuffled_control_does_not(corpus, key):
    """100 Adam steps of a one-block GPT take the held-out loss below the unigram entropy (the
    best loss without context); the same training on shuffled tokens (no context to learn
    from) stays at or above it."""
    config = gpt.GPTConfig(len(corpus.vocab), 32, d_model=32, num_heads=2, num_layers=1)
    fn = models.functional(gpt.GPT(config, rngs=nnx.Rngs(0)))
    sequences = corpus.train.take(slice(0, None, 8))  # every 8th window: 4772 from every document
    held_out = corpus.validation.take(slice(0, None, 4))
    unigram = data.unigram_entropy(held_out.y)
    loss = jax.jit(fn.loss_fn)

    def held_out_loss(train_data, seed):
        result = train.train(fn, fn.params, train_data, jax.random.fold_in(key, seed),
                             optimizer=optax.adam(1e-2), num_steps=100, batch_size=32, progress=False)
        return float(loss(result.params, held_out))

    learned = held_out_loss(sequences, 0)
    control = held_out_loss(data.shuffle_tokens(sequences, jax.random.fold_in(key, 2)), 1)
    assert learned < unigram - 0.3, (learned, unigram)
    assert control > unigram - 0.05, (control, unigram)
    assert math.isfinite(control)
