"""Entity-level (span) F1 of a tagger: conlleval's and seqeval's scores as
a Keras metric, exact under `tf.distribute`."""

import keras
import numpy as np
import tensorflow as tf

from kobjectives.ops import spans as span_ops

_MODES = ("default", "strict")


def _scores(tp, predicted, gold):
    """Precision, recall and F1 as Python floats, 0 where there is nothing
    to divide (seqeval's `zero_division=0`)."""
    precision = tp / predicted if predicted else 0.0
    recall = tp / gold if gold else 0.0
    f1 = 2.0 * tp / (predicted + gold) if predicted + gold else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


@keras.saving.register_keras_serializable(package="kobjectives")
class SpanF1(keras.metrics.Metric):
    """Entity-level F1 over spans of IOB tags, with seqeval's semantics.

    Reads the entities (chunks) of the gold and the predicted tag sequences
    and counts, per entity type, the true positives (a predicted entity with
    the start, end and type of a gold one), the predicted and the gold
    entities (`kobjectives.ops.spans.span_counts`). `result()` is the micro
    F1 over all types, `2 TP / (predicted + gold)`, so it shows in `fit`
    logs; `report()` gives precision, recall, F1 and support per type, micro
    and macro, as seqeval's `classification_report(..., output_dict=True,
    zero_division=0)`.

    Modes: `"default"` reads chunks by conlleval's rules, as seqeval's
    default mode (an `I-X` after `O` or after another type starts a chunk);
    `"strict"` is seqeval's `mode="strict", scheme=IOB2` (only `B-X I-X*`
    chunks count). See `kobjectives.ops.spans` for the rules. Tags must be
    `"O"`, `"B-<type>"` or `"I-<type>"`; unprefixed tags and IOBES tags are
    refused at construction.

    `sample_weight` is a mask of the words: the positions of weight 0
    (padding, the sub-word pieces after a word's first) are removed before
    the entities are read, as if the sentence were only its weighted
    positions, so an entity may run across removed pieces. Weights are not
    otherwise applied: every entity counts 1.

    The state is the `[num_types, 3]` count variable, which Keras sums over
    replicas (`aggregation="sum"`), so under `tf.distribute` the scores are
    those of the global batch. Counts are float32: exact up to 2**24
    entities per type. A tag id outside `[0, len(tags))` at a weighted
    position raises (`ValueError` eagerly, `InvalidArgumentError` from an
    assert in a graph); under `jit_compile=True`, where XLA drops asserts,
    the counts become NaN instead of silently wrong.

    Args:
        tags: list of str, the tag of every tag id, e.g.
            `["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]`: exactly one `"O"`
            and `"B-<type>"` / `"I-<type>"` tags, each once.
        mode: `"default"` (conlleval) or `"strict"` (IOB2).
        name: Name of the metric.
        dtype: dtype of the metric's state (float32).

    Call arguments (`update_state`):
        y_true: int `[batch, length]`, the gold tag ids.
        y_pred: int `[batch, length]`, the predicted tag ids, or scores
            `[batch, length, len(tags)]` (logits or probabilities) whose
            arg-max is taken.
        sample_weight: optional `[batch, length]` (or `[batch]`, one per
            sentence); positions of weight > 0 are words.

    Reference:
        Tjong Kim Sang & De Meulder, 2003, "Introduction to the CoNLL-2003
        Shared Task: Language-Independent Named Entity Recognition" (the
        `conlleval` script); Nakayama, 2018, seqeval,
        https://github.com/chakki-works/seqeval

    Example:

    >>> metric = SpanF1(["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])
    >>> y_true = [[1, 2, 0, 3, 0], [3, 4, 4, 0, 0]]  # PER LOC / LOC
    >>> y_pred = [[1, 2, 0, 0, 0], [3, 4, 0, 0, 1]]  # PER / LOC(short) PER
    >>> metric.update_state(y_true, y_pred)
    >>> round(float(metric.result()), 4)  # 1 of 3 predicted, 1 of 3 gold
    0.3333
    >>> report = metric.report(digits=4)
    >>> report["PER"]
    {'precision': 0.5, 'recall': 1.0, 'f1': 0.6667, 'support': 1}
    >>> report["micro"]["f1"], report["macro"]["f1"]
    (0.3333, 0.3333)
    """

    def __init__(self, tags, mode="default", name="span_f1", dtype="float32", **kwargs):
        if mode not in _MODES:
            raise ValueError(
                f"`mode` must be one of {_MODES}: 'default' reads chunks as conlleval "
                "and seqeval's default mode, 'strict' as seqeval's strict IOB2 mode. "
                f"Received: mode={mode!r}"
            )
        prefixes, type_ids, types = span_ops.parse_iob_tags(tags)
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.tags = list(tags)
        self.mode = mode
        self.types = types
        self._prefixes = tuple(prefixes)
        self._type_ids = tuple(type_ids)
        self.counts = self.add_variable(
            shape=(max(len(types), 1), 3), initializer="zeros", name="counts",
            aggregation="sum",
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds a batch (see the class docstring for the arguments)."""
        y_pred = tf.convert_to_tensor(y_pred)
        if y_pred.shape.rank == 3:
            if y_pred.shape[-1] is not None and y_pred.shape[-1] != len(self.tags):
                raise ValueError(
                    f"`y_pred` scores have {y_pred.shape[-1]} classes on the last axis "
                    f"but `tags` has {len(self.tags)} tags. Pass tag ids "
                    "[batch, length] or scores [batch, length, len(tags)]."
                )
            y_pred = tf.argmax(y_pred, axis=-1, output_type=tf.int32)
        if sample_weight is not None:
            sample_weight = tf.convert_to_tensor(sample_weight)
            if sample_weight.shape.rank == 1:
                sample_weight = sample_weight[:, None]
        counts = span_ops.span_counts(
            y_true, y_pred, sample_weight, self._prefixes, self._type_ids,
            max(len(self.types), 1), strict=self.mode == "strict",
        )
        self.counts.assign_add(tf.reduce_sum(counts, axis=0))

    def result(self):
        """The micro F1, `2 TP / (predicted + gold)` (0 when both are 0)."""
        tp, predicted, gold = tf.unstack(
            tf.reduce_sum(tf.convert_to_tensor(self.counts), axis=0)
        )
        return tf.math.divide_no_nan(2.0 * tp, predicted + gold)

    def report(self, digits=None):
        """Precision, recall, F1 and support per entity type, micro and macro.

        As seqeval's `classification_report(..., output_dict=True,
        zero_division=0)`: the types are those with a gold or a predicted
        entity, in sorted order; `"micro"` scores the summed counts;
        `"macro"` is the unweighted mean over those types. Read in the cross-
        replica context (after `fit`/`evaluate`), the counts are summed over
        replicas.

        Args:
            digits: int or None, the decimals the scores are rounded to
                (None: not rounded).

        Returns:
            dict `{type: {"precision", "recall", "f1", "support"}, "micro":
            {...}, "macro": {...}}` of Python floats (`support`, the number
            of gold entities, an int).
        """
        counts = np.asarray(self.counts.numpy(), np.float64)
        report = {}
        for index in sorted(range(len(self.types)), key=lambda i: self.types[i]):
            tp, predicted, gold = counts[index]
            if predicted + gold > 0:
                report[self.types[index]] = dict(_scores(tp, predicted, gold), support=int(gold))
        tp, predicted, gold = counts.sum(axis=0)
        micro = dict(_scores(tp, predicted, gold), support=int(gold))
        per_type = list(report.values())
        macro = {
            key: float(np.mean([row[key] for row in per_type])) if per_type else 0.0
            for key in ("precision", "recall", "f1")
        }
        macro["support"] = int(gold)
        report["micro"], report["macro"] = micro, macro
        if digits is not None:
            for row in report.values():
                for key in ("precision", "recall", "f1"):
                    row[key] = round(row[key], digits)
        return report

    def reset_state(self):
        self.counts.assign(tf.zeros_like(self.counts))

    def get_config(self):
        return {"tags": list(self.tags), "mode": self.mode, "name": self.name,
                "dtype": self.dtype}
