"""`SentencePairGenerator`: seeded NSP / SOP segment pairs for `tf.data`."""

import numbers

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from kobjectives.ops import sentence_pairs
from kobjectives.layers.arguments import check_distinct
from kobjectives.layers.arguments import check_id
from kobjectives.layers.arguments import check_int as _check_int
from kobjectives.layers.seeded_layer import SeededLayer
from kobjectives.layers.token_inputs import check_token_ids

TASKS = sentence_pairs.TASKS


@keras.saving.register_keras_serializable(package="kobjectives")
class SentencePairGenerator(SeededLayer):
    """Builds BERT next-sentence (NSP) or ALBERT sentence-order (SOP) pairs.

    From a batch of documents given as token ids per sentence, draws one
    segment pair per document and packs it with keras-hub's
    `MultiSegmentPacker` as `[CLS] A [SEP] B [SEP] [PAD]...` with segment ids
    0 for `[CLS] A [SEP]` and 1 for `B [SEP]`. The sampling follows Google
    BERT's `create_pretraining_data.py` (see
    `kobjectives.ops.sentence_pairs`):

    - the target length is `sequence_length - 3`, or with probability
      `short_seq_prob` a uniform length in `[2, sequence_length - 3]`;
    - a chunk of consecutive sentences starts at a random sentence and grows
      to the target length; A ends at a random sentence boundary inside it
      and the actual next segment B is the rest of the chunk;
    - `task="nsp"`: with probability `negative_rate` (label 1) B is replaced
      by text from another, uniformly drawn, document of the same batch
      (from a random sentence on, up to the remaining target length);
      otherwise (label 0) B is the actual next segment. A one-sentence
      document is cut at a random token.
    - `task="sop"`: with probability `negative_rate` (label 1) the two
      segments are swapped, `(B, A)`; otherwise (label 0) they stay in order.
      Every document needs at least two sentences.
    - pairs longer than `sequence_length - 3` are truncated as BERT's
      `truncate_seq_pair`: one token at a time from the longer segment, from
      its front or its back at random.

    Labels follow Google BERT / ALBERT: **0 = in order (B is A's actual
    continuation), 1 = random next (NSP) or swapped (SOP)**.

    **Randomness** is stateless: `call(inputs, seed=...)` with an int seed of
    shape `[2]` gives the same pairs for the same input. Without it, the
    layer's `keras.random.SeedGenerator(seed)` supplies a new seed per call.
    `generator.map_over(dataset, seed=...)` gives pairs that are reproducible
    under parallel maps and new in every epoch (one seed per element from
    `tf.data.Dataset.random`).

    Args:
        task: `"nsp"` or `"sop"`.
        sequence_length: int >= 5, the packed length (including `[CLS]` and
            two `[SEP]`).
        start_value: int, the `[CLS]` id.
        end_value: int, the `[SEP]` id.
        pad_value: int, the `[PAD]` id. Defaults to 0. The three ids must
            differ (the packed pair could not be read back otherwise).
        short_seq_prob: float in `[0, 1]`, the probability of a shorter
            target length. Defaults to 0.1 (BERT).
        negative_rate: float in `[0, 1]`, the probability of label 1.
            Defaults to 0.5.
        seed: int or None, the seed of the layer's seed generator and the
            default seed of `map_over`.
        vocabulary_size: optional int. When given, the ids above and every
            input token id must be in `[0, vocabulary_size)`; without it
            they must be `>= 0`. A bad input id fails the call naming it.
        **kwargs: standard `keras.layers.Layer` arguments.

    Input:
        Integer token ids as a `tf.RaggedTensor` `[documents, (sentences),
        (tokens)]` (or a nested Python list of that shape), or one document
        `[(sentences), (tokens)]` (unbatched; SOP only, since NSP draws its
        random segment from the other documents of the batch). Every
        sentence needs at least one token, every document at least one
        sentence (two for SOP) and two tokens; otherwise the call fails
        naming the problem. An empty batch gives an empty batch.

    Output:
        A dict with `"token_ids"` int32 `[documents, sequence_length]`,
        `"segment_ids"` int32 (same shape), `"padding_mask"` bool (same
        shape, True on real tokens) and `"pair_labels"` int32 `[documents]`
        (no batch axis for unbatched input). Shapes are static.

    References:
        - [Devlin et al., 2019](https://arxiv.org/abs/1810.04805) (BERT,
          next-sentence prediction), and Google BERT's
          `create_pretraining_data.py`.
        - [Lan et al., 2020](https://arxiv.org/abs/1909.11942) (ALBERT,
          sentence-order prediction).

    Example:

    >>> cls_id, sep_id = 1, 2
    >>> generator = SentencePairGenerator(
    ...     task="nsp", sequence_length=12, start_value=cls_id, end_value=sep_id,
    ...     seed=4)
    >>> documents = tf.ragged.constant([
    ...     [[10, 11, 12], [13, 14], [15, 16, 17]],   # document 0: 3 sentences
    ...     [[20, 21], [22, 23, 24]],                 # document 1: 2 sentences
    ... ])
    >>> pairs = generator(documents)
    >>> pairs["token_ids"].numpy().tolist()
    [[1, 10, 11, 12, 13, 14, 2, 15, 16, 17, 2, 0],
     [1, 20, 21, 2, 11, 12, 13, 14, 15, 16, 17, 2]]
    >>> pairs["segment_ids"].numpy().tolist()[0]
    [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0]
    >>> pairs["pair_labels"].numpy().tolist()  # in order; B from document 0
    [0, 1]

    In `tf.data`: documents batched as ragged tensors, new pairs each epoch.

    >>> ds = tf.data.Dataset.from_tensor_slices(documents).ragged_batch(2)
    >>> ds = generator.map_over(ds, seed=7)
    >>> ds.element_spec["token_ids"]
    TensorSpec(shape=(None, 12), dtype=tf.int32, name=None)
    """

    # Independent of the seeds `MaskedLMMasker.map_over` gives the same elements.
    map_over_stream = 1

    def __init__(
        self,
        task,
        sequence_length,
        start_value,
        end_value,
        pad_value=0,
        short_seq_prob=0.1,
        negative_rate=0.5,
        seed=None,
        vocabulary_size=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        if task not in TASKS:
            raise ValueError(
                f"`task` must be one of {TASKS} (next-sentence or "
                f"sentence-order prediction). Received: task={task!r}."
            )
        _check_int("sequence_length", sequence_length)
        if sequence_length < 5:
            raise ValueError(
                "`sequence_length` must be >= 5: the packed pair needs [CLS], "
                "[SEP], [SEP] and a token per segment. Received: "
                f"sequence_length={sequence_length!r}."
            )
        if vocabulary_size is not None:
            _check_int("vocabulary_size", vocabulary_size, minimum=1)
            vocabulary_size = int(vocabulary_size)
        for name, value in (
            ("start_value", start_value),
            ("end_value", end_value),
            ("pad_value", pad_value),
        ):
            check_id(name, value, vocabulary_size)
        check_distinct(start_value=start_value, end_value=end_value, pad_value=pad_value)
        for name, value in (
            ("short_seq_prob", short_seq_prob),
            ("negative_rate", negative_rate),
        ):
            if (
                not isinstance(value, numbers.Real)
                or isinstance(value, (bool, np.bool_))
                or not 0.0 <= value <= 1.0
            ):
                raise ValueError(
                    f"`{name}` must be a probability in [0, 1]. Received: "
                    f"{name}={value!r}. BERT uses short_seq_prob=0.1 and "
                    "negative_rate=0.5."
                )
        if seed is not None:
            _check_int("seed", seed)
        self.task = task
        self.sequence_length = int(sequence_length)
        self.start_value = int(start_value)
        self.end_value = int(end_value)
        self.pad_value = int(pad_value)
        self.short_seq_prob = float(short_seq_prob)
        self.negative_rate = float(negative_rate)
        self.vocabulary_size = vocabulary_size
        self._set_seed(seed)
        self.packer = keras_hub.layers.MultiSegmentPacker(
            sequence_length=self.sequence_length,
            start_value=self.start_value,
            end_value=self.end_value,
            pad_value=self.pad_value,
            truncate="round_robin",
            dtype="int32",
        )
        self.built = True

    def call(self, inputs, seed=None):
        """Draws and packs one pair per document.

        Args:
            inputs: ragged token ids, see the class docstring.
            seed: optional int tensor of shape `[2]`; the same seed and input
                give the same pairs.
        """
        sentences = inputs
        if not isinstance(sentences, tf.RaggedTensor):
            if isinstance(sentences, (list, tuple)):
                sentences = tf.ragged.constant(sentences)
            else:
                raise ValueError(
                    "SentencePairGenerator expects a tf.RaggedTensor of token "
                    "ids [documents, (sentences), (tokens)] (or one document "
                    "[(sentences), (tokens)]). Received: "
                    f"{type(inputs).__name__} {getattr(inputs, 'shape', '')}. "
                    "Tokenize each document's sentences into a ragged tensor."
                )
        if not sentences.dtype.is_integer:
            raise ValueError(
                "SentencePairGenerator expects integer token ids. Received "
                f"dtype {sentences.dtype.name}; tokenize the sentences first."
            )
        rank = sentences.shape.rank
        if rank not in (2, 3):
            raise ValueError(
                "SentencePairGenerator expects token ids of shape [documents, "
                "(sentences), (tokens)] or [(sentences), (tokens)]. Received "
                f"shape {sentences.shape}."
            )
        unbatched = rank == 2
        if unbatched:
            if self.task == "nsp":
                raise ValueError(
                    "SentencePairGenerator(task='nsp') needs a batch of "
                    "documents: the random next segment comes from another "
                    "document of the batch. Batch the documents (e.g. "
                    "`dataset.ragged_batch(32)`) before mapping the layer."
                )
            sentences = tf.RaggedTensor.from_row_splits(
                sentences, tf.stack([0, sentences.nrows()])
            )
        if sentences.ragged_rank == 1:  # equal-length sentences
            sentences = sentences.with_values(
                tf.RaggedTensor.from_tensor(sentences.values)
            )
        ids = check_token_ids(sentences.flat_values, "SentencePairGenerator", self.vocabulary_size)
        sentences = sentences.with_flat_values(tf.cast(ids, tf.int32))
        seed = self._next_seed(seed)
        sample = sentence_pairs.sample_sentence_pairs(
            sentences,
            seed,
            max_num_tokens=self.sequence_length - 3,
            task=self.task,
            short_seq_prob=self.short_seq_prob,
            negative_rate=self.negative_rate,
        )
        token_ids, segment_ids = self.packer((sample.segment_a, sample.segment_b))
        lengths = (
            sample.segment_a.row_lengths() + sample.segment_b.row_lengths() + 3
        )
        padding_mask = tf.sequence_mask(lengths, self.sequence_length)
        batch = sentences.shape[0]  # static where the batch was (drop_remainder)
        shape = [batch, self.sequence_length]
        # The packer flattens an empty batch to [0]: give it its row length.
        token_ids = tf.reshape(token_ids, [-1, self.sequence_length])
        segment_ids = tf.reshape(segment_ids, [-1, self.sequence_length])
        outputs = {
            "token_ids": tf.ensure_shape(tf.cast(token_ids, tf.int32), shape),
            "segment_ids": tf.ensure_shape(tf.cast(segment_ids, tf.int32), shape),
            "padding_mask": tf.ensure_shape(padding_mask, shape),
            "pair_labels": tf.ensure_shape(sample.labels, [batch]),
        }
        if unbatched:
            outputs = {k: v[0] for k, v in outputs.items()}
        return outputs

    def compute_output_shape(self, input_shape):
        batch = tuple(input_shape)[:-2]
        shape = batch + (self.sequence_length,)
        return {
            "token_ids": shape,
            "segment_ids": shape,
            "padding_mask": shape,
            "pair_labels": batch,
        }

    def compute_output_spec(self, inputs, seed=None):
        shapes = self.compute_output_shape(inputs.shape)
        dtypes = {"padding_mask": "bool"}
        return {
            k: keras.KerasTensor(v, dtype=dtypes.get(k, "int32"))
            for k, v in shapes.items()
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "task": self.task,
                "sequence_length": self.sequence_length,
                "start_value": self.start_value,
                "end_value": self.end_value,
                "pad_value": self.pad_value,
                "short_seq_prob": self.short_seq_prob,
                "negative_rate": self.negative_rate,
                "seed": self.seed,
                "vocabulary_size": self.vocabulary_size,
            }
        )
        return config

