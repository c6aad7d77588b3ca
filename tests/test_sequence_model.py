"""The masking-aware sequence classifier: same answer at any padding, the generated task, the
signature that pads inside, and refusals of empty or too-long sequences (pad-to-max vs
bucketing runs end to end in test_models_cli.py)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfprod.data.sequence_task import KEY_TOKEN, long_tail_lengths, sequence_task
from tfprod.data.sequences import bucketed_batches, padded_batches
from tfprod.errors import TfprodError
from tfprod.export import export_saved_model
from tfprod.export.ragged import RaggedInput
from tfprod.models.sequence import (
    check_sequences,
    predict_sequences,
    sequence_classifier,
)


def test_generated_task_labels_depend_on_content_and_length():
    sequences, labels = sequence_task(600, median=10, max_length=60, seed=3)
    for s, label in zip(sequences, labels, strict=True):
        where = np.flatnonzero(s == KEY_TOKEN)
        half = len(s) // 2
        assert label == (0 if not len(where) else 1 if where[0] < half else 2)
        assert len(where) <= 1 and (label != 2 or where[0] >= len(s) - half)
    assert min(min(s) for s in sequences) >= 1  # 0 is padding, never a token
    assert np.bincount(labels).min() > 150
    tail = long_tail_lengths(5000, median=20, max_length=400, seed=0)
    assert np.median(tail) == pytest.approx(20, abs=2) and tail.max() > 5 * np.median(tail)


def test_the_model_gives_the_same_answer_at_any_padding():
    keras.utils.set_random_seed(0)
    model = sequence_classifier(20, 3, units=4)
    tokens = np.array([[5, 9, 1, 300, -2]], np.int32)  # 300 and -2: the OOV row
    short = model(tokens).numpy()
    padded = model(np.pad(tokens, [(0, 0), (0, 40)])).numpy()
    np.testing.assert_allclose(padded, short, rtol=1e-5, atol=1e-6)
    # Out-of-vocabulary ids share one row: 300 and 301 give the same answer.
    other = model(np.array([[5, 9, 1, 301, -2]], np.int32)).numpy()
    np.testing.assert_allclose(other, short, rtol=1e-6)


def test_bucketed_batches_know_their_cardinality_and_refuse_overlong_sequences():
    sequences = [np.arange(1, n + 1) for n in (1, 2, 3, 9, 10, 30)]
    ds = bucketed_batches(sequences, batch_size=2, boundaries=[4, 20])
    assert int(ds.cardinality()) == len(list(ds)) == 4  # [1, 2], [3], [9, 10], [30]
    with pytest.raises(TfprodError, match="sequence 5 has 30 steps, more than max_length"):
        bucketed_batches(sequences, batch_size=2, max_length=20)
    padded = list(padded_batches(sequences, batch_size=4, padded_length=32))
    assert [b.shape[1] for b in padded] == [32, 32]
    with pytest.raises(TfprodError, match="more than padded_length=16"):
        padded_batches(sequences, padded_length=16)


def test_empty_and_overlong_sequences_are_refused_by_name():
    with pytest.raises(TfprodError, match="sequence 1 is empty"):
        check_sequences([np.array([3]), np.array([], np.int32)])
    with pytest.raises(TfprodError, match="sequence 0 has 5 tokens, more than max_length=4"):
        check_sequences([np.arange(5)], max_length=4)


def test_exported_signature_pads_and_masks_inside(tmp_path):
    keras.utils.set_random_seed(0)
    model = sequence_classifier(50, 4, units=4)
    sequences, labels = sequence_task(40, median=6, max_length=30, seed=2)
    result = export_saved_model(model, tmp_path / "seq", reference_data=(sequences, labels),
                                ragged_inputs={"tokens": RaggedInput(max_length=30)})
    assert result.signature["inputs"] == {
        "tokens.values": {"dtype": "int32", "shape": [None]},
        "tokens.row_lengths": {"dtype": "int64", "shape": [None]}}
    fn = tf.saved_model.load(result.path).signatures["serving_default"]
    batch = [np.array([3, 9, 4]), np.array([7]), np.arange(2, 30)]
    got = fn(**{"tokens.values": tf.constant(np.concatenate(batch), tf.int32),
                "tokens.row_lengths": tf.constant([3, 1, 28], tf.int64)})["probabilities"]
    # Each sequence alone, unpadded, in Keras: the padding inside the signature is masked.
    want = np.concatenate([model(s[None].astype(np.int32)).numpy() for s in batch])
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predict_sequences(model, batch), want, rtol=1e-5, atol=1e-6)
    for values, lengths, match in (([3], [1, 0], "list 1 is empty"),
                                   (list(range(2, 34)), [32], "list 0 has 32 values, more "
                                                             "than the longest this model "
                                                             "takes \\(30\\)")):
        with pytest.raises(tf.errors.InvalidArgumentError, match=match):
            fn(**{"tokens.values": tf.constant(values, tf.int32),
                  "tokens.row_lengths": tf.constant(lengths, tf.int64)})
