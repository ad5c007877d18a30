"""tf.data pipelines for labelled data: texts with a class label (sequence
classification) and sentences of tagged words (token classification), the
shared labelled datasets the runs offer by name, and the simple baselines
of both tasks (the majority class; the dictionary tagger).

The pipelines are static-shaped (`drop_remainder=True` by default), so they
feed XLA-compiled and TPU steps; the order of a shuffled dataset is seeded.
"""

import collections
import os
import pathlib

import tensorflow as tf

from kobjectives.data.labelled import OUTSIDE
from kobjectives.data.labelled import validate_tags
from kobjectives.layers.word_label_aligner import token_classification_inputs

SHARED_DATA_DIR = "../shared/data"
"""The default folder of the shared datasets (relative to the working
directory: the repository root)."""

CLASSIFICATION_DATASETS = {
    "sst2": ("sst2/train.tsv", "sst2/dev.tsv"),
    "chnsenticorp": ("chinese/chnsenticorp_train.tsv", "chinese/chnsenticorp_dev.tsv"),
}
"""The shared classification datasets: name -> `(training file, held-out
file)` under the shared folder. The reserved test splits are never named."""

TAGGING_DATASETS = {
    "conll2003": ("ner/conll2003/train.txt", "ner/conll2003/dev.txt"),
    "cluener2020": ("ner/cluener2020/train.txt", None),
}
"""The shared tagging datasets: name -> `(training file, held-out file or
None)`. CLUENER2020's `dev.txt` is reserved (it has no labelled test split),
so it has no held-out file here."""


def shared_dataset_files(name, datasets, shared_dir=SHARED_DATA_DIR):
    """The files of a shared dataset: `(train_path, heldout_path or None)`.

    Args:
        name: a key of `datasets`.
        datasets: `CLASSIFICATION_DATASETS` or `TAGGING_DATASETS` (or a
            dict of the same form).
        shared_dir: the folder of the shared datasets.

    Returns:
        A tuple of `pathlib.Path` (the second `None` where the dataset has
        no held-out file).

    Raises:
        ValueError: an unknown `name`.
        FileNotFoundError: `shared_dir` or a file is missing; the message
            names the folder and how to point at another one.

    Example:

    >>> shared_dataset_files("sst2", {"sst2": ("sst2/train.tsv", None)}, "/nowhere")
    Traceback (most recent call last):
    ...
    FileNotFoundError: The shared datasets folder '/nowhere' does not exist (dataset 'sst2' needs /nowhere/sst2/train.tsv). Set data.shared_dir to the folder holding the shared datasets, or train on the embedded corpus (data.dataset = 'corpus').
    """
    if name not in datasets:
        raise ValueError(
            f"Unknown dataset {name!r}. Valid: {', '.join(sorted(datasets))}.")
    root = pathlib.Path(os.path.expanduser(str(shared_dir)))
    paths = tuple(root / p if p else None for p in datasets[name])
    if not root.is_dir():
        raise FileNotFoundError(
            f"The shared datasets folder {str(shared_dir)!r} does not exist (dataset {name!r} "
            f"needs {paths[0]}). Set data.shared_dir to the folder holding the shared "
            "datasets, or train on the embedded corpus (data.dataset = 'corpus').")
    for path in paths:
        if path is not None and not path.is_file():
            raise FileNotFoundError(
                f"Dataset {name!r}: {path} is missing from the shared datasets folder "
                f"{str(shared_dir)!r}.")
    return paths


def _check_batching(batch_size, count, drop_remainder, what):
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an int >= 1. Received: {batch_size!r}.")
    if count == 0:
        raise ValueError(f"No {what}: give at least one.")
    if drop_remainder and count < batch_size:
        raise ValueError(
            f"{count} {what} make no full batch of batch_size={batch_size}: give more data, "
            "a smaller batch_size, or drop_remainder=False.")


def classification_dataset(texts, labels, preprocessor, batch_size, *, shuffle=False,
                           repeat=False, seed=0, drop_remainder=True, cache=False):
    """Labelled texts as `(x, y)` batches for `SequenceClassifier`.

    Args:
        texts: list of str.
        labels: list of int class ids (>= 0), one per text.
        preprocessor: a keras-hub text-classifier preprocessor (e.g.
            `keras_hub.models.BertTextClassifierPreprocessor`): a batch of
            strings -> `{"token_ids", "padding_mask", "segment_ids"}`, int
            `[batch, L]`. The same object serves the SavedModel, so training
            and serving tokenize alike.
        batch_size: int, examples per batch.
        shuffle: shuffle the examples (seeded, a new order every epoch).
        repeat: repeat forever (training).
        seed: int, the shuffle seed.
        drop_remainder: drop the last partial batch (static batch size).
        cache: cache the encoded batches (fixed validation data).

    Returns:
        A `tf.data.Dataset` of `(x, y)`: `x` the preprocessor's dict, `y`
        int32 `[batch]`.

    Raises:
        ValueError: texts and labels of different lengths, a negative or
            non-integer label, no texts, or fewer than one batch with
            `drop_remainder`.

    Example:

    >>> import keras_hub
    >>> vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad"]
    >>> preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
    ...     keras_hub.models.BertTokenizer(vocabulary=vocabulary), sequence_length=4)
    >>> ds = classification_dataset(["good", "bad bad", "good bad"], [1, 0, 1],
    ...                             preprocessor, batch_size=2)
    >>> x, y = next(iter(ds))
    >>> x["token_ids"].numpy().tolist(), y.numpy().tolist()
    ([[2, 5, 3, 0], [2, 6, 6, 3]], [1, 0])
    """
    texts, labels = list(texts), list(labels)
    if len(texts) != len(labels):
        raise ValueError(
            f"`texts` and `labels` must have one label per text. Received {len(texts)} texts "
            f"and {len(labels)} labels.")
    for index, label in enumerate(labels):
        if isinstance(label, bool) or not isinstance(label, int) or label < 0:
            raise ValueError(
                f"labels[{index}] = {label!r}: labels must be int class ids >= 0.")
    _check_batching(batch_size, len(texts), drop_remainder, "texts")
    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.constant(texts, tf.string), tf.constant(labels, tf.int32)))
    if shuffle:
        dataset = dataset.shuffle(len(texts), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    batch = batch_size if drop_remainder else None

    def encode(text, label):
        # keras-hub's packer loses the static batch size; restore it.
        x = {k: tf.ensure_shape(v, [batch, *v.shape[1:]]) for k, v in preprocessor(text).items()}
        return x, label

    dataset = dataset.map(encode, num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        dataset = dataset.cache()
    if repeat:
        dataset = dataset.repeat()
    return dataset.prefetch(tf.data.AUTOTUNE)


def encode_tags(sentences, tags):
    """Tag names -> tag ids: `(words, tag ids)` pairs, checked against `tags`.

    Args:
        sentences: list of `(words, tags)` pairs of equal-length lists of str.
        tags: list of str, the tag set (index = tag id), e.g. the training
            split's `kobjectives.data.tag_set`.

    Returns:
        A list of `(words, ids)` pairs: lists of str and of int.

    Raises:
        ValueError: a tag outside `tags` (naming it and where it is), an
            empty sentence, or words and tags of different lengths
            (`kobjectives.data.validate_tags`).

    Example:

    >>> encode_tags([(["EU", "rejects"], ["B-ORG", "O"])], ["O", "B-ORG", "I-ORG"])
    [(['EU', 'rejects'], [1, 0])]
    """
    tags = list(tags)
    validate_tags(sentences, tags)
    index = {tag: i for i, tag in enumerate(tags)}
    return [(list(words), [index[t] for t in sentence_tags]) for words, sentence_tags in sentences]


def tagged_sentence_dataset(sentences, aligner, batch_size, *, shuffle=False, repeat=False,
                            seed=0, drop_remainder=True, cache=False, features=False):
    """Sentences of words with tag ids as token-classification batches.

    Each batch of sentences (a ragged batch of words and tag ids) goes
    through `aligner` (`kobjectives.layers.WordLabelAligner`), which
    tokenizes each word, lays the pieces out with the start and end tokens,
    pads to its `sequence_length` and marks which tokens carry a word's tag.

    Args:
        sentences: list of `(words, tag_ids)` pairs (lists of str and int of
            the same non-zero length), e.g. from `encode_tags`.
        aligner: a `WordLabelAligner`.
        batch_size: int, sentences per batch.
        shuffle: shuffle the sentences (seeded, a new order every epoch).
        repeat: repeat forever (training).
        seed: int, the shuffle seed.
        drop_remainder: drop the last partial batch (static batch size).
        cache: cache the aligned batches.
        features: return the aligner's whole output dict (with `word_ids`,
            `num_words`, `num_words_kept`: for mapping predictions back to
            words) instead of Keras' `(x, y, sample_weight)`.

    Returns:
        A `tf.data.Dataset` of `(x, y, sample_weight)`
        (`kobjectives.layers.token_classification_inputs`: `x` with
        `token_ids`, `padding_mask`, `label_mask` `[batch, L]`, `y` int32
        tag ids `[batch, L]`, `sample_weight` float32 `[batch, L]`), or of
        the aligner's feature dicts.

    Raises:
        ValueError: no sentences, an empty sentence, words and tags of
            different lengths, or fewer than one batch with
            `drop_remainder`.

    Example:

    >>> import keras_hub
    >>> from kobjectives.layers import WordLabelAligner
    >>> vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "eu", "rejects", "germ",
    ...               "##an"]
    >>> tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True)
    >>> aligner = WordLabelAligner(tokenizer, 6, start_token_id=2, end_token_id=3, num_tags=3)
    >>> ds = tagged_sentence_dataset([(["EU", "rejects"], [1, 0]), (["German"], [2])],
    ...                              aligner, batch_size=2)
    >>> x, y, w = next(iter(ds))
    >>> x["token_ids"].numpy().tolist(), y.numpy().tolist()
    ([[2, 5, 6, 3, 0, 0], [2, 7, 8, 3, 0, 0]], [[0, 1, 0, 0, 0, 0], [0, 2, 0, 0, 0, 0]])
    """
    sentences = list(sentences)
    for index, (words, tag_ids) in enumerate(sentences):
        if not words or len(words) != len(tag_ids):
            raise ValueError(
                f"sentences[{index}] has {len(words)} words and {len(tag_ids)} tags: every "
                "sentence needs at least one word and one tag id per word.")
    _check_batching(batch_size, len(sentences), drop_remainder, "sentences")
    words = tf.ragged.constant([list(w) for w, _ in sentences], dtype=tf.string)
    tag_ids = tf.ragged.constant([list(t) for _, t in sentences], dtype=tf.int32)
    dataset = tf.data.Dataset.from_tensor_slices({"words": words, "tags": tag_ids})
    if shuffle:
        dataset = dataset.shuffle(len(sentences), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.ragged_batch(batch_size, drop_remainder=drop_remainder)
    dataset = dataset.map(aligner, num_parallel_calls=tf.data.AUTOTUNE)
    if not features:
        dataset = dataset.map(token_classification_inputs, num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        dataset = dataset.cache()
    if repeat:
        dataset = dataset.repeat()
    return dataset.prefetch(tf.data.AUTOTUNE)


def majority_class(labels, num_classes):
    """The most frequent label and its share: the majority-class baseline.

    Args:
        labels: list of int training labels.
        num_classes: int, the number of classes (ties go to the lower id).

    Returns:
        `(class_id, fraction)`.

    Example:

    >>> majority_class([0, 2, 2, 1], 3)
    (2, 0.5)
    """
    counts = collections.Counter(labels)
    if not counts:
        raise ValueError("`labels` is empty: the majority class needs training labels.")
    best = max(range(num_classes), key=lambda c: (counts[c], -c))
    return best, counts[best] / len(labels)


def dictionary_tagger(sentences, outside=OUTSIDE):
    """The dictionary baseline of tagging: each word's most frequent training tag.

    Ties go to the tag seen first for that word. Words never seen in
    training get `outside`.

    Args:
        sentences: list of `(words, tags)` training pairs (tags as str or
            ids).
        outside: the tag of unknown words (`"O"`, or its id).

    Returns:
        A function mapping a list of words to a list of tags.

    Example:

    >>> tagger = dictionary_tagger([(["EU", "rejects", "EU"], ["B-ORG", "O", "B-ORG"]),
    ...                             (["EU"], ["B-LOC"])])
    >>> tagger(["EU", "rejects", "German"])
    ['B-ORG', 'O', 'O']
    """
    counts = collections.defaultdict(collections.Counter)
    for words, tags in sentences:
        for word, tag in zip(words, tags):
            counts[word][tag] += 1
    # Counter.most_common keeps insertion order among equal counts.
    lexicon = {word: c.most_common(1)[0][0] for word, c in counts.items()}

    def tag(words):
        return [lexicon.get(word, outside) for word in words]

    return tag
