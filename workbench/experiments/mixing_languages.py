"""The data of the objective-mixing paper: two "languages" from text shipped with Python,
parallel pairs packed several to a sequence, and in-context probes.

Language A is English: the docstrings of standard-library modules, lower-cased, letters, spaces
and ".,". Language B is our construction, made so a small model cannot learn it at a glance:
every word's letters go through one of two substitution alphabets chosen by the previous source
letter (a vowel selects the second: a context-dependent rule), and adjacent words swap places
(a word-order rule). B's own text (for language modelling) is B applied to a different part of
the English text than the parallel pairs. The runs are in `workbench.experiments.mixing`.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench import mixing
from workbench.core.numerics import check_positive_int

LETTERS = "abcdefghijklmnopqrstuvwxyz"
VOCAB = " .," + LETTERS + "=|:;#"  # '=' '|' the trained pair format; ':' ';' an unseen one; '#' padding
PAD = VOCAB.index("#")
TRAINED_FORMAT = ("=", "|")
UNSEEN_FORMAT = (":", ";")
EVAL_NAMES = ("language modelling, A", "language modelling, B (under-represented)", "translation A -> B (targets)")
MODULES = ("argparse", "textwrap", "difflib", "calendar", "collections", "functools", "inspect", "pathlib",
           "subprocess", "threading", "typing", "dataclasses", "logging", "json", "csv", "email.message",
           "unittest.case", "shutil", "tarfile", "zipfile", "random", "statistics", "decimal", "fractions",
           "os", "re", "datetime", "itertools", "socket", "ssl", "heapq", "bisect", "enum", "configparser",
           "optparse", "smtplib", "ftplib", "imaplib", "pdb", "bdb", "cmd", "codecs", "pickle", "copy", "pprint",
           "string", "tempfile", "glob", "fnmatch", "gettext", "locale", "operator", "contextlib", "types",
           "asyncio.events", "asyncio.tasks", "asyncio.streams", "concurrent.futures._base", "multiprocessing.pool",
           "http.client", "http.server", "http.cookiejar", "urllib.parse", "urllib.request", "xml.dom.minidom",
           "xml.etree.ElementTree", "mailbox", "poplib", "wave",
           "zoneinfo", "ipaddress", "selectors", "sched", "queue", "trace", "timeit", "doctest", "pydoc",
           "tokenize", "ast", "dis", "pickletools", "sqlite3", "lzma", "bz2", "gzip", "hashlib", "hmac", "secrets",
           "uuid", "base64", "binascii", "quopri", "html.parser", "mimetypes", "webbrowser", "wsgiref.simple_server",
           "xmlrpc.client", "xmlrpc.server", "plistlib", "netrc", "shlex", "getopt", "getpass", "platform",
           "sysconfig", "importlib.metadata", "zipimport", "runpy", "modulefinder", "compileall", "filecmp",
           "stat", "io", "warnings", "traceback", "gc", "weakref", "abc", "numbers", "cmath", "array")


@functools.lru_cache(maxsize=4)
def _english(modules: tuple[str, ...]) -> tuple[str, ...]:
    docs = []
    with warnings.catch_warnings():  # reading some members' docstrings warns of their deprecation
        warnings.simplefilter("ignore")
        for name in modules:
            module = importlib.import_module(name)
            seen = set()
            for _, obj in inspect.getmembers(module):
                doc = inspect.getdoc(obj) if callable(obj) and getattr(obj, "__module__", None) == name else None
                if doc and doc not in seen:
                    seen.add(doc)
                    docs.append(doc)
    text = re.sub(r"[^a-z.,]+", " ", "\n".join(docs).lower())
    return tuple(w for w in text.split() if any(c in LETTERS for c in w))


def english(modules: Sequence[str] = MODULES) -> list[str]:
    """The words of language A: the docstrings of `modules`, lower-cased, letters and ".,".

    Args:
        modules: standard-library modules to read.

    Returns:
        The words in order (punctuation stays attached to its word).
    """
    return list(_english(tuple(modules)))


class Language(NamedTuple):
    """Language B's rules: two substitution alphabets (`after_consonant`, `after_vowel`: strings
    of 26 letters) and whether adjacent words swap."""

    after_consonant: str
    after_vowel: str
    swap_words: bool


def language(seed: int = 0, *, contextual: bool = True, swap_words: bool = True) -> Language:
    """Language B's rules, drawn from `seed`.

    Args:
        seed: the seed of the two alphabets.
        contextual: two alphabets chosen by the previous letter (False: one alphabet, a plain
            substitution cipher).
        swap_words: adjacent words swap places.

    Returns:
        The `Language`.
    """
    rng = np.random.default_rng(seed)
    first = "".join(rng.permutation(list(LETTERS)))
    second = "".join(rng.permutation(list(LETTERS))) if contextual else first
    return Language(first, second, swap_words)


def translate_word(word: str, lang: Language) -> str:
    """One word of A in language B (punctuation kept in place).

    Args:
        word: a word of A (letters and ".,").
        lang: the `Language`.

    Returns:
        The word in B: each letter through the alphabet its previous letter selects.
    """
    out, previous = [], ""
    for c in word:
        if c in LETTERS:
            table = lang.after_vowel if previous in "aeiou" and previous else lang.after_consonant
            out.append(table[LETTERS.index(c)])
            previous = c
        else:
            out.append(c)
            previous = ""
    return "".join(out)


def translate(words: Sequence[str], lang: Language) -> list[str]:
    """Words of A in language B: each word translated, then adjacent words swapped (a, b, c, d ->
    b', a', d', c'; an odd last word stays).

    Args:
        words: the words of A.
        lang: the `Language`.

    Returns:
        The words of B.
    """
    out = [translate_word(w, lang) for w in words]
    if lang.swap_words:
        for i in range(0, len(out) - 1, 2):
            out[i], out[i + 1] = out[i + 1], out[i]
    return out


def encode(text: str) -> np.ndarray:
    """Characters to token ids of `VOCAB`.

    Args:
        text: characters of `VOCAB`.

    Returns:
        int32 ids [len(text)].

    Raises:
        ValueError: characters outside the vocabulary (named).
    """
    try:
        return np.array([VOCAB.index(c) for c in text], np.int32)
    except ValueError:
        bad = sorted(set(text) - set(VOCAB))
        raise ValueError(f"characters outside the vocabulary: {bad}") from None


def decode(ids) -> str:
    """Token ids back to characters.

    Args:
        ids: token ids of `VOCAB` (any shape; read in order).

    Returns:
        The string.
    """
    return "".join(VOCAB[int(i)] for i in np.asarray(ids).reshape(-1))


def _sequences(text: str, seq_len: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    ids = encode(text)
    need = count * seq_len + 1
    if len(ids) < need:
        raise ValueError(f"the text has {len(ids)} characters; {need} are needed for {count} sequences of {seq_len}")
    ids = ids[:need]
    return ids[:-1].reshape(count, seq_len), ids[1:].reshape(count, seq_len)


def _chunks(words: Sequence[str], rng: np.random.Generator, max_chars: int) -> list[list[str]]:
    """Consecutive runs of 2-4 words, at most `max_chars` characters."""
    out, i = [], 0
    while i < len(words) - 1:
        size = int(rng.integers(2, 5))
        chunk = list(words[i:i + size])
        while len(chunk) > 1 and len(" ".join(chunk)) > max_chars:
            chunk.pop()
        out.append(chunk)
        i += len(chunk)
    return out


def pack_pairs(pairs: Sequence[tuple[str, str]], seq_len: int, *, fmt=TRAINED_FORMAT,
               target_only: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parallel pairs packed several to a sequence as "src=tgt|src=tgt|...", padded with '#'.

    Args:
        pairs: (source, target) strings.
        seq_len: characters per sequence.
        fmt: the (separator, terminator) characters.
        target_only: weigh only the target characters and the terminator (the translation
            objective); False weighs every non-padding position (the control).

    Returns:
        (x, y, weights), each [m, seq_len]; no pair is split across sequences.
    """
    sep, end = fmt
    rows, weights = [], []
    text, scored = "", []
    for src, tgt in pairs:
        unit = f"{src}{sep}{tgt}{end}"
        if len(unit) + 1 > seq_len + 1:
            continue
        if len(text) + len(unit) > seq_len + 1:
            rows.append(text)
            weights.append(scored)
            text, scored = "", []
        scored += [False] * (len(src) + 1) + [True] * (len(tgt) + 1)
        text += unit
    if text:
        rows.append(text)
        weights.append(scored)
    x = np.full((len(rows), seq_len), PAD, np.int32)
    y = np.full((len(rows), seq_len), PAD, np.int32)
    w = np.zeros((len(rows), seq_len), np.float32)
    for i, (row, score) in enumerate(zip(rows, weights)):
        ids = encode(row)
        m = min(len(ids) - 1, seq_len)
        x[i, :m] = ids[:m]
        y[i, :m] = ids[1:m + 1]
        # position t predicts character t + 1
        w[i, :m] = np.asarray(score[1:m + 1], np.float32) if target_only else 1.0
    return x, y, w


class Corpus(NamedTuple):
    """The paper's data.

    - `objectives`: `mixing.ObjectiveTasks` with tasks ("lm", "mt"): language modelling on a
      stream that is (1 - b_share) A and b_share B, and translation A -> B;
    - `eval_sets`: held-out (x, y, weights) for language modelling on A and on B, and translation;
    - `eval_names`: their names;
    - `probe_pairs`: held-out (source, target) pairs for the in-context probes;
    - `lang`: language B's rules;
    - `target`: (x, y, weights) the B sequences of the language-modelling stream, the set target
      rewards are measured on (training data, not the held-out B set).
    """

    objectives: mixing.ObjectiveTasks
    eval_sets: tuple
    eval_names: tuple[str, ...]
    probe_pairs: list[tuple[str, str]]
    lang: Language
    target: tuple


def corpus(*, seq_len: int = 96, num_sequences: int = 2048, b_share: float = 0.05, num_eval: int = 128,
           seed: int = 0, target_only: bool = True, aligned: bool = True, contextual: bool = True,
           swap_words: bool = True) -> Corpus:
    """Build the two tasks and the held-out sets from the English words, split into disjoint parts.

    Args:
        seq_len: characters per sequence.
        num_sequences: sequences per task.
        b_share: the share of B sequences in the language-modelling stream, in [0, 1].
        num_eval: held-out sequences per evaluation set.
        seed: the seed of language B and of the chunking.
        target_only: the translation loss on targets only (False: every position, the control).
        aligned: parallel pairs are translations (False: each source sits with the translation
            of another chunk, the same B text without the supervision; a control).
        contextual, swap_words: language B's rules (see `language`).

    Returns:
        The `Corpus`.

    Raises:
        ValueError: a share outside [0, 1] or more text asked for than the modules hold.
    """
    seq_len = check_positive_int("seq_len", seq_len, least=16)
    num_sequences = check_positive_int("num_sequences", num_sequences)
    num_eval = check_positive_int("num_eval", num_eval)
    if not 0.0 <= b_share <= 1.0:
        raise ValueError(f"b_share must lie in [0, 1], got {b_share}")
    words = english()
    lang = language(seed, contextual=contextual, swap_words=swap_words)
    rng = np.random.default_rng(seed)  # chunking and the language-modelling order
    num_b = int(round(b_share * num_sequences))
    num_a = num_sequences - num_b
    chars_per_word = 6.5
    cut = lambda count: int((count * seq_len + 1) / chars_per_word * 1.3) + 50
    parts, start = {}, 0
    for name, count in (("a", num_a + num_eval), ("b", num_b + num_eval)):
        parts[name] = words[start:start + cut(count)]
        start += cut(count)
    pair_words = words[start:]
    chunks = _chunks(pair_words, rng, max_chars=14)
    pairs = [(" ".join(c), " ".join(translate(c, lang))) for c in chunks]
    held = max(num_eval * 4, 64)
    if len(pairs) < held + 32:
        raise ValueError("the modules hold too little text for this many sequences; ask for fewer")
    probe_pairs, eval_pairs, train_pairs = pairs[:held // 2], pairs[held // 2:held], pairs[held:]
    if not aligned:
        targets = [t for _, t in train_pairs]
        order = np.random.default_rng([seed, 1]).permutation(len(targets))
        train_pairs = [(s, targets[j]) for (s, _), j in zip(train_pairs, order)]
    a_x, a_y = _sequences(" ".join(parts["a"]), seq_len, num_a + num_eval)
    b_text = " ".join(translate(parts["b"], lang))
    b_x, b_y = _sequences(b_text, seq_len, num_b + num_eval)
    lm_x = np.concatenate([a_x[:num_a], b_x[:num_b]])
    lm_y = np.concatenate([a_y[:num_a], b_y[:num_b]])
    order = rng.permutation(num_sequences)
    lm = (lm_x[order], lm_y[order], np.ones_like(lm_x, np.float32))
    mt_x, mt_y, mt_w = pack_pairs(train_pairs, seq_len, target_only=target_only)
    if len(mt_x) < num_sequences:  # fewer packed sequences than asked: repeat them (epochs)
        reps = -(-num_sequences // len(mt_x))
        mt_x, mt_y, mt_w = (np.concatenate([a] * reps) for a in (mt_x, mt_y, mt_w))
    mt = (mt_x[:num_sequences], mt_y[:num_sequences], mt_w[:num_sequences])
    ev_x, ev_y, ev_w = pack_pairs(eval_pairs, seq_len)
    ones = lambda a: np.ones_like(a, np.float32)
    eval_sets = ((a_x[num_a:], a_y[num_a:], ones(a_x[num_a:])),
                 (b_x[num_b:], b_y[num_b:], ones(b_x[num_b:])),
                 (ev_x[:num_eval], ev_y[:num_eval], ev_w[:num_eval]))
    objectives = mixing.stack_objectives(("lm", "mt"), [lm, mt])
    if num_b == 0:
        raise ValueError("b_share leaves no B sequence in the language-modelling stream; raise it")
    target = (jnp.asarray(b_x[:num_b]), jnp.asarray(b_y[:num_b]), jnp.ones((num_b, seq_len), jnp.float32))
    return Corpus(objectives, tuple(tuple(jnp.asarray(a) for a in s) for s in eval_sets), EVAL_NAMES,
                  probe_pairs, lang, target)


def probe_set(pairs: Sequence[tuple[str, str]], shots: int, seq_len: int, fmt=TRAINED_FORMAT,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """In-context translation probes: `shots` demonstration pairs, then a query pair, in `fmt`;
    only the query's target characters are scored (teacher forcing).

    Args:
        pairs: held-out (source, target) pairs.
        shots: demonstrations before each query (0: the query alone).
        seq_len: characters per sequence (probes that do not fit are dropped).
        fmt: the (separator, terminator) characters.
        seed: the seed choosing each query's demonstrations.

    Returns:
        (x, y, weights), [num_probes, seq_len].
    """
    sep, end = fmt
    rng = np.random.default_rng(seed)
    xs, ys, ws = [], [], []
    for q, (src, tgt) in enumerate(pairs):
        others = [p for i, p in enumerate(pairs) if i != q]
        demos = [others[i] for i in rng.choice(len(others), shots, replace=False)] if shots else []
        prefix = "".join(f"{s}{sep}{t}{end}" for s, t in demos) + f"{src}{sep}"
        text = prefix + tgt + end
        if len(text) > seq_len + 1:
            continue
        ids = encode(text)
        x = np.full(seq_len, PAD, np.int32)
        y = np.full(seq_len, PAD, np.int32)
        w = np.zeros(seq_len, np.float32)
        x[:len(ids) - 1] = ids[:-1]
        y[:len(ids) - 1] = ids[1:]
        w[len(prefix) - 1:len(ids) - 2] = 1.0  # the target's characters (not the terminator)
        xs.append(x), ys.append(y), ws.append(w)
    if not xs:
        raise ValueError(f"no probe with {shots} demonstrations fits in {seq_len} characters")
    return np.stack(xs), np.stack(ys), np.stack(ws)


def induction_set(key: jax.Array, num: int, seq_len: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Random letter strings repeated once: (x, y, weights on the first copy, weights on the second).

    Args:
        key: PRNG key.
        num: sequences.
        seq_len: characters per sequence (the string is half of it).

    Returns:
        (x, y, first-half weights, second-half weights), [num, seq_len]; the second-half
        weights cover the repeated characters after the first one.
    """
    half = seq_len // 2
    letters = jnp.asarray(encode(LETTERS))
    s = letters[jax.random.randint(key, (num, half + 1), 0, 26)]
    seq = jnp.concatenate([s[:, :half], s[:, :half], s[:, :1]], axis=1)[:, :seq_len + 1]
    x, y = seq[:, :-1], seq[:, 1:]
    pos = jnp.arange(seq_len)
    first = ((pos >= 1) & (pos < half - 1)).astype(jnp.float32)
    second = (pos >= half).astype(jnp.float32)
    rows = lambda w: jnp.broadcast_to(w, (num, seq_len))
    return x, y, rows(first), rows(second)
