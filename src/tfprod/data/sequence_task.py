"""A generated variable-length classification task whose answer depends on content and length.

Each sequence holds token ids drawn uniformly from ``[2, vocab_size)``; two thirds of them also
hold the key token ``1`` once, in the first or in the second half of the sequence. The label::

    0: no key token    1: the key in the first half    2: the key in the second half

so a model must find the key (content) and know where the sequence's middle is (its true
length): a model that reads padding as content, or cannot tell where the sequence ends, fails.
The label does not follow the length itself, so batches of similar lengths (bucketing) still
hold every class. Id ``0`` is never used: it is the padding value.

Lengths follow a long tail (:func:`long_tail_lengths`): a log-normal around ``median`` with
``sigma``, clipped to ``[1, max_length]``, so most sequences are short and a few are up to
``max_length`` long, where padding every batch to the longest sequence wastes most steps.
"""

from __future__ import annotations

import numpy as np

from tfprod.errors import TfprodError

KEY_TOKEN = 1
PAD = 0


def long_tail_lengths(n: int, *, median: int = 20, sigma: float = 0.9, max_length: int = 400,
                      seed: int = 0) -> np.ndarray:
    """``n`` lengths, log-normal(log(median), sigma) rounded and clipped to [1, max_length]."""
    if n < 1 or median < 1 or max_length < median:
        raise TfprodError(f"n={n}, median={median}, max_length={max_length}; expected "
                          "positive values with median <= max_length")
    rng = np.random.default_rng(seed)
    lengths = np.round(rng.lognormal(np.log(median), sigma, size=n))
    return np.clip(lengths, 1, max_length).astype(np.int64)


def sequence_task(n: int = 4000, *, vocab_size: int = 50, median: int = 20,
                  sigma: float = 0.9, max_length: int = 400,
                  seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Sequences and their labels (3 classes, see the module docstring).

    Args:
        n: sequences.
        vocab_size: token ids are ``1`` (the key) and ``2 .. vocab_size - 1``.
        median, sigma, max_length: the length distribution (:func:`long_tail_lengths`).
        seed: everything is drawn from it.

    Returns:
        ``(sequences, labels)``: a list of int32 arrays and an int32 array of labels in 0..2
        (sequences of one token have no halves: always 0).
    """
    if vocab_size < 3:
        raise TfprodError(f"vocab_size={vocab_size}; expected at least 3 (padding 0, the key "
                          "token 1, one other token)")
    rng = np.random.default_rng(seed + 1)
    lengths = long_tail_lengths(n, median=median, sigma=sigma, max_length=max_length, seed=seed)
    wanted = rng.integers(0, 3, size=n)
    sequences, labels = [], np.zeros(n, np.int32)
    for i, (length, label) in enumerate(zip(lengths, wanted, strict=True)):
        tokens = rng.integers(2, vocab_size, size=length).astype(np.int32)
        half = length // 2
        if label and half:
            first = rng.integers(0, half)
            tokens[first if label == 1 else length - half + first] = KEY_TOKEN
            labels[i] = label
        sequences.append(tokens)
    return sequences, labels
