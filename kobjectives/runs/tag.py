"""The token-classification (tagging, NER) run behind `kobjectives train tag`.

Data (`[data]`, see docs/fine_tuning.md): the embedded corpus's
entity-tagging task (`data.dataset = "corpus"`, the default; IOB2 tags of
module and exception names), a shared dataset (`"conll2003"`,
`"cluener2020"` under `data.shared_dir`), or `data.files`: a CoNLL training
file and, optionally, a held-out CoNLL file. Validation is a slice of the
training data (`data.validation_fraction`); the held-out file (CoNLL-2003's
`dev.txt`) is scored once, at the end. The tag set is the training slice's
(`kobjectives.data.tag_set`), saved as `tags.json`.
"""

import dataclasses
import json
import pathlib

import keras
import numpy as np
import tensorflow as tf

from kobjectives import data as data_lib
from kobjectives.data import corpus_tasks
from kobjectives.data import labelled_pipelines as pipelines
from kobjectives.layers.word_label_aligner import WordLabelAligner
from kobjectives.layers.word_label_aligner import word_tags_from_token_tags
from kobjectives.metrics.span_f1 import SpanF1
from kobjectives.objectives.token_classifier import TokenClassifier
from kobjectives.recipe import ModelConfig
from kobjectives.recipe import Recipe
from kobjectives.recipe import Section
from kobjectives.recipe import TokenizerConfig
from kobjectives.recipe import TrainingConfig
from kobjectives.recipe import option
from kobjectives.recipe import section
from kobjectives.runs import register
from kobjectives.runs.labelled import LabelledDataConfig
from kobjectives.runs.labelled import LabelledRun
from kobjectives.runs.run import write_json

TAGS_FILE = "tags.json"
RESERVED_FILES = ("ner/conll2003/test.txt", "ner/cluener2020/dev.txt", "ner/wnut17/test.txt")
"""Shared files for final evaluation only: refused as `data.files`."""


@dataclasses.dataclass(frozen=True)
class TaggingDataConfig(LabelledDataConfig):
    """Tagged sentences: a named dataset or CoNLL files, and the validation slice."""

    reserved_files = RESERVED_FILES

    files: tuple[str, ...] = option(
        (), "CoNLL files (token<TAB>tag, blank line between sentences): the training file, "
        "then optionally a held-out file scored at the end (empty: data.dataset)")
    dataset: str = option(
        "corpus", "corpus: the embedded entity-tagging task; conll2003 (dev.txt as the "
        "held-out file), cluener2020 (train.txt only: its dev.txt is reserved): the shared "
        "datasets under data.shared_dir", choices=("corpus", *pipelines.TAGGING_DATASETS))
    shared_dir: str = option(
        pipelines.SHARED_DATA_DIR, "the folder of the shared datasets (data.dataset)")
    max_documents: int = option(
        0, "keep the first N sentences of each file (the corpus: N by content hash; 0 = all)",
        within="[0, inf)")
    validation_fraction: float = option(
        0.1, "the share of the training sentences held out for validation (a stable hash "
        "of each sentence decides)", within="(0, 1)")


@dataclasses.dataclass(frozen=True)
class TaggingConfig(Section):
    """The tagger: its CRF, which pieces carry a word's tag, how spans are scored."""

    use_crf: bool = option(False, "a linear-chain CRF on the tag scores (Viterbi decoding)")
    label_all_pieces: bool = option(
        False, "label every piece of a word (false: the first piece only, as BERT)")
    span_mode: str = option(
        "default", "entity F1 chunking: default (conlleval, seqeval's default) or strict (IOB2)",
        choices=("default", "strict"))


@dataclasses.dataclass(frozen=True)
class TagRecipe(Recipe):
    """Token classification (`TokenClassifier`) on the embedded corpus's
    entity-tagging task, CoNLL-2003, CLUENER2020 or CoNLL files."""

    data: TaggingDataConfig = section(TaggingDataConfig)
    tokenizer: TokenizerConfig = section(TokenizerConfig, vocabulary_size=8192, lowercase=False)
    model: ModelConfig = section(ModelConfig, backbone="bert_tiny", sequence_length=128)
    tagging: TaggingConfig = section(TaggingConfig)
    training: TrainingConfig = section(TrainingConfig, steps=1000, epochs=5, warmup_steps=100)


def export_word_tagger(model, aligner, tags, export_dir):
    """Writes a SavedModel that tags the whitespace-separated words of raw text.

    `serving_default`: `text` string `[B]` -> with `L` the aligner's
    `sequence_length` (at most `L` words are reported per text):

    - `tags`: string `[B, L]`, the tag of each word (`""` past the text's
      words; `"O"` for a word cut off by truncation);
    - `tag_ids`: int32 `[B, L]`, their ids in `tags` (-1 past the words);
    - `num_words`: int32 `[B]`, the words of each text; `num_words_kept`:
      int32 `[B]`, those whose first piece fitted in `L` tokens;
    - `token_ids`: int32 `[B, L]`, what the text became.

    Loads with TensorFlow and `import tensorflow_text` only. A text without
    any word fails the call.

    Args:
        model: a built `TokenClassifier`.
        aligner: the `WordLabelAligner` of training (without tags).
        tags: list of str, the tag names (index = tag id), `"O"` first.
        export_dir: the folder to write.

    Returns:
        The export directory, as a string.

    Example:

    >>> import keras_hub, tempfile
    >>> vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "eu", "rejects"]
    >>> tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True)
    >>> backbone = keras_hub.models.BertBackbone(
    ...     vocabulary_size=7, num_layers=1, num_heads=1, hidden_dim=8,
    ...     intermediate_dim=8, max_sequence_length=6)
    >>> aligner = WordLabelAligner(tokenizer, 6, start_token_id=2, end_token_id=3)
    >>> path = export_word_tagger(TokenClassifier(backbone, num_tags=3), aligner,
    ...                           ["O", "B-ORG", "I-ORG"], tempfile.mkdtemp() + "/tagger")
    >>> serve = tf.saved_model.load(path).signatures["serving_default"]
    >>> out = serve(text=tf.constant(["EU rejects", "EU"]))
    >>> out["num_words"].numpy().tolist(), out["tags"].shape
    ([2, 1], TensorShape([2, 6]))
    >>> out["tags"].numpy()[1, 1:].tolist()  # past the words
    [b'', b'', b'', b'', b'']
    """
    archive = keras.export.ExportArchive()
    archive.track(model)
    holder = tf.Module()
    holder.aligner = aligner  # the tokenizer's lookup table is saved with it
    archive.track(holder)
    length = aligner.sequence_length
    tag_names = list(tags)

    def serve(text):
        features = aligner(tf.strings.split(text))
        inputs = {"token_ids": features["token_ids"], "padding_mask": features["padding_mask"]}
        token_tags = model.decode_tags(model(inputs, training=False), features["label_mask"])
        word_tags = word_tags_from_token_tags(
            token_tags, features["word_ids"], num_words=length, fill_value=0)
        present = tf.range(length)[None, :] < features["num_words"][:, None]
        return {
            "tags": tf.where(present, tf.gather(tf.constant(tag_names), word_tags), ""),
            "tag_ids": tf.where(present, word_tags, -1),
            "num_words": features["num_words"],
            "num_words_kept": features["num_words_kept"],
            "token_ids": features["token_ids"],
        }

    archive.add_endpoint(
        "serving_default", serve,
        input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    export_dir = str(export_dir)
    if tf.io.gfile.exists(export_dir):
        tf.io.gfile.rmtree(export_dir)
    archive.write_out(export_dir, verbose=False)
    return export_dir


@register
class TagRun(LabelledRun):
    """`kobjectives train tag`: a `TokenClassifier` (optionally with a CRF) on
    tagged words; held-out entity F1 (`SpanF1`, micro and per type) next to
    the dictionary baseline (each word's most frequent training tag, else
    `O`); the SavedModel tags the whitespace-separated words of raw text."""

    name = "tag"
    recipe_class = TagRecipe
    title = "token classification"
    task = "tagging"
    shared_datasets = pipelines.TAGGING_DATASETS
    tags = None
    heldout_sentences = None
    heldout_name = None

    # -- checks and data ----------------------------------------------------------

    def load_documents(self):
        """The training sentences `[(words, tags)]` (tag names); sets
        `heldout_sentences` (the held-out file's, or None)."""
        limit = self.recipe.data.max_documents or None
        files = self.data_files()
        self.heldout_sentences, self.heldout_name = None, None
        if files is None:
            return [tuple(s) for s in corpus_tasks.entity_tagging_task(max_sentences=limit)]
        train_path, heldout_path, _ = files
        sentences = data_lib.read_conll(train_path)[:limit]
        if heldout_path is not None:
            self.heldout_sentences = data_lib.read_conll(heldout_path)[:limit]
            self.heldout_name = heldout_path.name
        return sentences

    def train_tokenizer(self, documents):
        return super().train_tokenizer([" ".join(words) for words, _ in documents])

    def prepare(self):
        """Data and tokenizer (`Run.prepare`), then the tag set of the
        training sentences, written to `tags.json`.

        Raises:
            ValueError: a validation or held-out sentence has a tag the
                training sentences lack (naming it and where it is).
        """
        super().prepare()
        self.tags = data_lib.tag_set(self.train_documents)
        for what, sentences in (("validation slice", self.validation_documents),
                                ("held-out file", self.heldout_sentences)):
            if sentences:
                try:
                    data_lib.validate_tags(sentences, self.tags)
                except ValueError as error:
                    raise ValueError(
                        f"The {what} has a tag outside the training tag set {self.tags}: "
                        f"{error} Train on data holding every tag (more data, or another "
                        "data.validation_fraction / training.seed).") from None
        write_json(self._out_dir() / TAGS_FILE, self.tags)
        self.log(f"tags: {len(self.tags)} ({', '.join(self.tags)})")

    def document_counts(self):
        counts = super().document_counts()
        if self.heldout_sentences is not None:
            counts["heldout"] = len(self.heldout_sentences)
        return counts

    def aligner(self, with_tags=True):
        """The `WordLabelAligner` of the run's tokenizer, `model.sequence_length`
        and `tagging.label_all_pieces` (with the tag set, or without for serving)."""
        tokenizer = self.tokenizer
        return WordLabelAligner(
            tokenizer, self.recipe.model.sequence_length,
            label_all_pieces=self.recipe.tagging.label_all_pieces,
            start_token_id=tokenizer.start_token_id, end_token_id=tokenizer.end_token_id,
            pad_token_id=tokenizer.pad_token_id, tags=self.tags if with_tags else None)

    def make_dataset(self, split, batch_size, input_context=None):
        """`(x, y, sample_weight)` batches: `"train"` shuffled and repeated;
        `"validation"` at most `training.validation_batches` fixed batches."""
        sentences = pipelines.encode_tags(self.documents(split, input_context), self.tags)
        seed = self.recipe.training.seed
        if split == "train":
            return pipelines.tagged_sentence_dataset(
                sentences, self.aligner(), batch_size, shuffle=True, repeat=True, seed=seed)
        if len(sentences) < batch_size:
            raise ValueError(
                f"The validation split ({len(sentences)} sentences) is smaller than one batch "
                f"of {batch_size}. Give more data or raise data.validation_fraction.")
        dataset = pipelines.tagged_sentence_dataset(
            sentences, self.aligner(), batch_size,
        ).take(self.recipe.training.validation_batches).cache()
        return self.finite_validation(dataset, len(sentences), batch_size)

    # -- model ---------------------------------------------------------------------

    def build_objective(self):
        import warnings

        # Tagging does not use BERT's pooler: it gets no gradient.
        warnings.filterwarnings(
            "ignore", message=r"Gradients do not exist for variables \['pooled_dense")
        return TokenClassifier(self.build_backbone(), num_tags=len(self.tags),
                               use_crf=self.recipe.tagging.use_crf,
                               dropout=self.recipe.model.dropout)

    def load_tokenizer(self):
        tokenizer = super().load_tokenizer()
        self.tags = json.loads((self._out_dir() / TAGS_FILE).read_text())
        return tokenizer

    # -- evaluation ----------------------------------------------------------------

    def predict_word_tags(self, model, sentences):
        """The model's tag ids per word of each sentence: a list of lists
        (a word cut off by truncation gets `O`); and the count of such words."""
        encoded = pipelines.encode_tags(sentences, self.tags)
        dataset = pipelines.tagged_sentence_dataset(
            encoded, self.aligner(), self.recipe.training.batch_size, drop_remainder=False,
            features=True)
        width = max(len(words) for words, _ in sentences)
        predicted, lost = [], 0
        for features in dataset:
            x = {k: features[k] for k in ("token_ids", "padding_mask", "label_mask")}
            token_tags = model.decode_tags(model(x, training=False), x["label_mask"])
            words = word_tags_from_token_tags(
                token_tags, features["word_ids"], num_words=width, fill_value=0).numpy()
            counts = features["num_words"].numpy()
            lost += int((counts - features["num_words_kept"].numpy()).sum())
            predicted.extend(row[:n].tolist() for row, n in zip(words, counts))
        return predicted, lost

    def span_report(self, gold, predicted):
        """`SpanF1.report()` of predicted against gold tag ids (lists of lists)."""
        width = max(len(row) for row in gold)

        def pad(rows):
            return np.array([row + [0] * (width - len(row)) for row in rows], np.int32)

        weights = pad([[1] * len(row) for row in gold])
        metric = SpanF1(self.tags, mode=self.recipe.tagging.span_mode)
        metric.update_state(pad(gold), pad(predicted), weights)
        return metric.report(digits=4)

    def evaluate(self, fitted):
        """Entity F1 (micro and per type) of the model and of the dictionary
        baseline on every validation sentence (and the held-out file)."""
        dictionary = pipelines.dictionary_tagger(self.train_documents)
        index = {tag: i for i, tag in enumerate(self.tags)}
        metrics = {
            "backbone": self.recipe.model.init or self.recipe.model.backbone,
            "dataset": self.data_files()[2] if self.data_files() else "corpus",
            "tags": list(self.tags),
            "use_crf": self.recipe.tagging.use_crf,
            "val_loss": fitted.evaluation["loss"],
            "val_tag_accuracy": fitted.evaluation.get("tag_accuracy"),
        }
        splits = [("val", self.validation_documents)]
        if self.heldout_sentences:
            splits.append(("heldout", self.heldout_sentences))
            metrics["heldout_file"] = self.heldout_name
        for prefix, sentences in splits:
            gold = [[index[t] for t in tags] for _, tags in sentences]
            predicted, lost = self.predict_word_tags(fitted.model, sentences)
            baseline = [[index[t] for t in dictionary(words)] for words, _ in sentences]
            report = self.span_report(gold, predicted)
            baseline_report = self.span_report(gold, baseline)
            metrics.update({
                f"{prefix}_span_f1": report["micro"]["f1"],
                f"{prefix}_span_precision": report["micro"]["precision"],
                f"{prefix}_span_recall": report["micro"]["recall"],
                f"{prefix}_span_report": report,
                f"{prefix}_dictionary_span_f1": baseline_report["micro"]["f1"],
                f"{prefix}_dictionary_span_report": baseline_report,
                f"{prefix}_words_truncated": lost,
            })
        return metrics

    def summary(self, metrics):
        lines = [
            f"validation entity F1 {metrics['val_span_f1']:.4f} vs dictionary baseline "
            f"{metrics['val_dictionary_span_f1']:.4f}"]
        if "heldout_span_f1" in metrics:
            lines.append(
                f"held-out ({metrics['heldout_file']}) entity F1 "
                f"{metrics['heldout_span_f1']:.4f} vs dictionary baseline "
                f"{metrics['heldout_dictionary_span_f1']:.4f}")
        return lines

    # -- export --------------------------------------------------------------------

    def export(self, model, out_dir):
        """Writes `out_dir/saved_model/` (`export_word_tagger`): raw text,
        split at whitespace into words, in; a tag per word out."""
        keras.mixed_precision.set_global_policy("float32")
        export_word_tagger(model, self.aligner(with_tags=False), self.tags,
                           pathlib.Path(out_dir) / "saved_model")
