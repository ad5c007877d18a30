import math

import numpy as np
import tensorflow as tf

from kobjectives.metrics.denoising_baselines import content_token_accuracy
from kobjectives.metrics.denoising_baselines import copy_baselines
from kobjectives.metrics.denoising_baselines import unigram_baseline


def test_unigram_baseline_counts_by_hand():
    # Vocabulary of 5: 3 is EOS (excluded). Training targets 1 1 1 2 3 (and a
    # padded slot, weight 0); add-one smoothing: counts 1 4 2 2 1 of 10.
    train = tf.data.Dataset.from_tensors(
        (tf.zeros([1]), [[1, 1, 1, 2, 3, 4]], [[1.0, 1.0, 1.0, 1.0, 1.0, 0.0]]))
    validation = [(None, np.array([[1, 2, 3, 3]]), np.array([[1.0, 1.0, 1.0, 1.0]]))]
    result = unigram_baseline(train, validation, 5, excluded_ids=(3,))
    assert result["token"] == 1 and result["content_token"] == 1
    assert result["token_accuracy"] == 1 / 4
    assert result["content_token_accuracy"] == 1 / 2  # of the text tokens 1, 2
    expected = -(math.log(4 / 10) + math.log(2 / 10) + 2 * math.log(2 / 10)) / 4
    assert math.isclose(result["perplexity"], math.exp(expected))
    # EOS most frequent: the content baseline takes the most frequent text token.
    eos = tf.data.Dataset.from_tensors((tf.zeros([1]), [[3, 3, 3, 2]], [[1.0] * 4]))
    result = unigram_baseline(eos, validation, 5, excluded_ids=(3,))
    assert (result["token"], result["content_token"]) == (3, 2)


def test_copy_baselines_count_by_hand():
    # Target [CLS] a b c d [SEP]; noised: [CLS] a [MASK] d [SEP] (b c infilled).
    # CLS=2, SEP=3, MASK=4; a..d = 10..13.
    encoder = np.array([[2, 10, 4, 13, 3, 0]], "int32")
    target = np.array([[2, 10, 11, 12, 13, 3]], "int32")
    x = {"encoder_token_ids": tf.constant(encoder),
         "encoder_padding_mask": tf.constant(encoder != 0)}
    dataset = [(x, tf.constant(target), tf.ones([1, 6]))]
    result = copy_baselines(dataset, mask_token_id=4, excluded_ids=(0, 2, 3))
    # Aligned copy: positions 0, 1 agree (CLS, a); text tokens a..d: only a.
    assert result["copy"] == {"token_accuracy": 2 / 6, "content_token_accuracy": 1 / 4}
    # Pointer copy: CLS (pointer -1 -> 0) right, a right, b: guess after a skips
    # [MASK] -> d, wrong; c: b is nowhere, pointer stays at a -> d, wrong;
    # d: right; SEP: right.
    assert result["pointer_copy"] == {"token_accuracy": 4 / 6, "content_token_accuracy": 2 / 4}


def test_content_token_accuracy_counts_text_positions_with_and_without_the_text_restriction():
    # Vocabulary of 6: 0 pad, 3 EOS, 5 a sentinel; text tokens 1, 2, 4.
    targets = np.array([[5, 1, 2, 3]], "int32")
    weights = np.array([[1, 1, 1, 0]], "float32")  # the EOS position is padding here
    logits = np.full((1, 4, 6), -5.0, "float32")
    logits[0, 0, 5] = 3.0                          # sentinel position (not text): not counted
    logits[0, 1, [5, 1]] = [2.0, 1.0]              # sentinel on top, target 1 second
    logits[0, 2, [4, 2]] = [2.0, 1.0]              # a wrong text token on top
    model = lambda x, training=False: tf.constant(logits)  # noqa: E731
    dataset = [({}, tf.constant(targets), tf.constant(weights))]
    text_argmax, any_argmax = content_token_accuracy(model, dataset, excluded_ids=(0, 3, 5))
    assert (text_argmax, any_argmax) == (0.5, 0.0)
