"""The sequence-classification run behind `kobjectives train classify`.

Data (`[data]`, see docs/fine_tuning.md): the embedded corpus's
module-classification task (`data.dataset = "corpus"`, the default), a
shared dataset (`"sst2"`, `"chnsenticorp"` under `data.shared_dir`), or
`data.files`: a labelled TSV training file and, optionally, a held-out TSV
file. Validation is always a slice of the training data
(`data.validation_fraction`); the held-out file (SST-2's and
ChnSentiCorp's `dev`) is scored once, at the end.
"""

import dataclasses
import json

import keras
import numpy as np
import tensorflow as tf

from kobjectives import data as data_lib
from kobjectives.data import corpus_tasks
from kobjectives.data import labelled_pipelines as pipelines
from kobjectives.metrics import baselines
from kobjectives.metrics.classification_metrics import ClassificationReport
from kobjectives.objectives.sequence_classifier import POOLING
from kobjectives.objectives.sequence_classifier import SequenceClassifier
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

LABELS_FILE = "labels.json"
RESERVED_FILES = ("sst2/test.tsv", "chinese/chnsenticorp_test.tsv")
"""Shared files for final evaluation only: refused as `data.files`."""


@dataclasses.dataclass(frozen=True)
class ClassificationDataConfig(LabelledDataConfig):
    """Labelled texts: a named dataset or TSV files, and the validation slice."""

    reserved_files = RESERVED_FILES

    files: tuple[str, ...] = option(
        (), "TSV files (label<TAB>text with a header row): the training file, then optionally "
        "a held-out file scored at the end (empty: data.dataset)")
    dataset: str = option(
        "corpus", "corpus: the embedded module-classification task; sst2, chnsenticorp: "
        "the shared datasets under data.shared_dir (train, with dev as the held-out file)",
        choices=("corpus", *pipelines.CLASSIFICATION_DATASETS))
    shared_dir: str = option(
        pipelines.SHARED_DATA_DIR, "the folder of the shared datasets (data.dataset)")
    max_documents: int = option(
        0, "keep the first N examples of each file (the corpus: N by content hash; 0 = all)",
        within="[0, inf)")
    validation_fraction: float = option(
        0.1, "the share of the training examples held out for validation (a stable hash "
        "of each example decides)", within="(0, 1)")


@dataclasses.dataclass(frozen=True)
class ClassifierConfig(Section):
    """The classification head and its loss."""

    corpus_classes: int = option(
        8, "data.dataset = corpus: the number of standard-library packages to tell apart",
        within="[2, 32]")
    pooling: str = option("auto", "the sentence representation (auto: BERT's pooler)",
                          choices=POOLING)
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy",
                                    within="[0, 1)")


@dataclasses.dataclass(frozen=True)
class ClassifyRecipe(Recipe):
    """Sequence classification (`SequenceClassifier`) on the embedded corpus's
    module-classification task, SST-2, ChnSentiCorp or labelled TSV files."""

    data: ClassificationDataConfig = section(ClassificationDataConfig)
    tokenizer: TokenizerConfig = section(TokenizerConfig, vocabulary_size=8192)
    model: ModelConfig = section(ModelConfig, backbone="bert_tiny", sequence_length=128)
    classifier: ClassifierConfig = section(ClassifierConfig)
    training: TrainingConfig = section(TrainingConfig, steps=1000, epochs=5, warmup_steps=100)


def plot_confusion_matrix(matrix, names, path, title):
    """Writes a PNG of a confusion matrix (rows true, columns predicted).

    Args:
        matrix: `[classes, classes]` counts (`ClassificationReport.report()`'s
            `confusion_matrix`).
        names: the class names.
        path: the PNG file.
        title: the plot's title.

    Example:

    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "confusion.png"
    >>> plot_confusion_matrix([[3, 1], [0, 2]], ["neg", "pos"], path, "demo")
    >>> path.read_bytes()[:4]
    b'\\x89PNG'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix, np.float64)
    size = max(4.0, 0.6 * len(names) + 2.0)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    high = matrix.max() / 2 if matrix.size else 0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, f"{matrix[i, j]:.0f}", ha="center", va="center",
                    color="white" if matrix[i, j] > high else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@keras.saving.register_keras_serializable(package="kobjectives")
class LabelledClassifier(keras.layers.Layer):
    """A `SequenceClassifier` whose exported outputs also name the class.

    The served layer of the `classify` run's SavedModel: `export_outputs`
    adds `label_ids` (int32 `[batch]`, the argmax) and `labels` (string
    `[batch]`, the class names) to the classifier's `logits` and
    `probabilities`.

    Args:
        classifier: a built single-label `SequenceClassifier`.
        label_names: list of `classifier.num_classes` str.

    Example:

    >>> import keras_hub, numpy as np
    >>> backbone = keras_hub.models.BertBackbone(
    ...     vocabulary_size=20, num_layers=1, num_heads=1, hidden_dim=8,
    ...     intermediate_dim=8, max_sequence_length=4)
    >>> layer = LabelledClassifier(SequenceClassifier(backbone, 2), ["neg", "pos"])
    >>> ids = np.array([[2, 5, 3, 0]], "int32")
    >>> out = layer.export_outputs({"token_ids": ids, "padding_mask": ids > 0})
    >>> sorted(out), out["labels"].numpy()[0] in (b"neg", b"pos")
    (['label_ids', 'labels', 'logits', 'probabilities'], True)
    """

    def __init__(self, classifier, label_names, **kwargs):
        super().__init__(**kwargs)
        if isinstance(classifier, dict):
            classifier = keras.saving.deserialize_keras_object(classifier)
        label_names = [str(n) for n in label_names]
        if len(label_names) != classifier.num_classes:
            raise ValueError(
                f"`label_names` must name the classifier's {classifier.num_classes} classes. "
                f"Received {len(label_names)}: {label_names!r}")
        self.classifier = classifier
        self.backbone = classifier.backbone
        self.label_names = label_names
        self.built = True

    def call(self, inputs):
        return self.classifier(inputs, training=False)

    def export_outputs(self, inputs):
        outputs = dict(self.classifier.export_outputs(inputs))
        ids = tf.argmax(outputs["logits"], axis=-1, output_type=tf.int32)
        outputs["label_ids"] = ids
        outputs["labels"] = tf.gather(tf.constant(self.label_names), ids)
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update({"classifier": keras.saving.serialize_keras_object(self.classifier),
                       "label_names": self.label_names})
        return config


@register
class ClassifyRun(LabelledRun):
    """`kobjectives train classify`: a `SequenceClassifier` on labelled texts;
    held-out accuracy, macro-F1 and per-class scores next to the
    majority-class baseline; the SavedModel maps raw text to `probabilities`
    and `labels` (the class names)."""

    name = "classify"
    recipe_class = ClassifyRecipe
    title = "sequence classification"
    task = "classification"
    shared_datasets = pipelines.CLASSIFICATION_DATASETS
    label_names = None
    heldout_examples = None
    heldout_name = None

    # -- checks and data ----------------------------------------------------------

    def load_documents(self):
        """The training examples `[(text, label id)]`; sets `label_names` and
        `heldout_examples` (the held-out file's, or None)."""
        limit = self.recipe.data.max_documents or None
        files = self.data_files()
        if files is None:
            texts, labels, self.label_names = corpus_tasks.module_classification_task(
                self.recipe.classifier.corpus_classes, max_examples=limit)
            self.heldout_examples, self.heldout_name = None, None
            return list(zip(texts, labels))
        train_path, heldout_path, name = files
        train = data_lib.read_classification_tsv(train_path)
        self.label_names = list(train.label_names)
        examples = list(zip(train.texts, train.labels))[:limit]
        self.heldout_examples, self.heldout_name = None, None
        if heldout_path is not None:
            heldout = data_lib.read_classification_tsv(heldout_path, label_names=self.label_names)
            self.heldout_examples = list(zip(heldout.texts, heldout.labels))[:limit]
            self.heldout_name = heldout_path.name
        return examples

    def train_tokenizer(self, documents):
        return super().train_tokenizer([text for text, _ in documents])

    def prepare(self):
        super().prepare()
        write_json(self._out_dir() / LABELS_FILE, self.label_names)
        self.log(f"classes: {len(self.label_names)} ({', '.join(self.label_names)})")

    def document_counts(self):
        counts = super().document_counts()
        if self.heldout_examples is not None:
            counts["heldout"] = len(self.heldout_examples)
        return counts

    def make_dataset(self, split, batch_size, input_context=None):
        """`(x, y)` batches: `"train"` shuffled and repeated; `"validation"`
        at most `training.validation_batches` fixed batches."""
        examples = self.documents(split, input_context)
        texts, labels = [t for t, _ in examples], [y for _, y in examples]
        preprocessor = self.serving_preprocessor()
        seed = self.recipe.training.seed
        if split == "train":
            return pipelines.classification_dataset(
                texts, labels, preprocessor, batch_size, shuffle=True, repeat=True, seed=seed)
        if len(texts) < batch_size:
            raise ValueError(
                f"The validation split ({len(texts)} examples) is smaller than one batch of "
                f"{batch_size}. Give more data or raise data.validation_fraction.")
        dataset = pipelines.classification_dataset(
            texts, labels, preprocessor, batch_size,
        ).take(self.recipe.training.validation_batches).cache()
        return self.finite_validation(dataset, len(texts), batch_size)

    # -- model ---------------------------------------------------------------------

    def build_objective(self):
        config = self.recipe.classifier
        if config.pooling not in ("auto", "pooled"):
            # BERT's pooler gets no gradient with another pooling.
            import warnings

            warnings.filterwarnings(
                "ignore", message=r"Gradients do not exist for variables \['pooled_dense")
        return SequenceClassifier(
            self.build_backbone(), num_classes=len(self.label_names), pooling=config.pooling,
            dropout=self.recipe.model.dropout, label_smoothing=config.label_smoothing)

    def load_tokenizer(self):
        tokenizer = super().load_tokenizer()
        self.label_names = json.loads((self._out_dir() / LABELS_FILE).read_text())
        return tokenizer

    # -- evaluation ----------------------------------------------------------------

    def score(self, model, examples):
        """`ClassificationReport.report()` of `model` on every example of
        `examples` (`[(text, label)]`, no batch dropped)."""
        texts, labels = [t for t, _ in examples], [y for _, y in examples]
        dataset = pipelines.classification_dataset(
            texts, labels, self.serving_preprocessor(), self.recipe.training.batch_size,
            drop_remainder=False)
        logits = model.predict(dataset.map(lambda x, y: x), verbose=0)
        report = ClassificationReport(len(self.label_names), class_names=self.label_names)
        report.update_state(np.asarray(labels), logits)
        return report.report()

    def evaluate(self, fitted):
        """Accuracy, macro-F1 and per-class precision/recall on the whole
        validation slice (and the held-out file), the majority-class
        baseline on the same examples, and `confusion_matrix.png`."""
        num_classes = len(self.label_names)
        majority, share = pipelines.majority_class(
            [y for _, y in self.train_documents], num_classes)
        metrics = {
            "backbone": self.recipe.model.init or self.recipe.model.backbone,
            "dataset": self.data_files()[2] if self.data_files() else "corpus",
            "classes": list(self.label_names),
            "val_loss": fitted.evaluation["loss"],
            "majority_class": self.label_names[majority],
            "majority_class_train_share": share,
        }
        bag_of_words = baselines.NaiveBayesBagOfWords(
            self.tokenizer, [_joined(t) for t, _ in self.train_documents],
            [y for _, y in self.train_documents], num_classes)
        splits = [("val", self.validation_documents)]
        if self.heldout_examples:
            splits.append(("heldout", self.heldout_examples))
            metrics["heldout_file"] = self.heldout_name
        for prefix, examples in splits:
            report = self.score(fitted.model, examples)
            labels = np.array([y for _, y in examples])
            metrics.update({
                f"{prefix}_accuracy": report["accuracy"],
                f"{prefix}_macro_f1": report["macro_f1"],
                f"{prefix}_classes": report["classes"],
                f"{prefix}_confusion_matrix": report["confusion_matrix"],
                f"{prefix}_majority_accuracy": float(np.mean(labels == majority)),
                f"{prefix}_majority_macro_f1": _constant_macro_f1(labels, majority, num_classes),
            })
            guessed = bag_of_words.predict([_joined(t) for t, _ in examples])
            bow = ClassificationReport(num_classes)
            bow.update_state(labels, guessed)
            metrics.update({
                f"{prefix}_bag_of_words_accuracy": float(np.mean(guessed == labels)),
                f"{prefix}_bag_of_words_macro_f1": bow.report()["macro_f1"],
            })
        last = splits[-1][0]
        plot_confusion_matrix(
            metrics[f"{last}_confusion_matrix"], self.label_names,
            self._out_dir() / "confusion_matrix.png",
            f"{self.title}: {'held-out file' if last == 'heldout' else 'validation'}")
        return metrics

    def summary(self, metrics):
        lines = [
            f"validation accuracy {metrics['val_accuracy']:.4f}, macro-F1 "
            f"{metrics['val_macro_f1']:.4f} vs majority-class baseline "
            f"{metrics['val_majority_accuracy']:.4f} (always {metrics['majority_class']!r}), "
            f"bag-of-words naive Bayes {metrics['val_bag_of_words_accuracy']:.4f}"]
        if "heldout_accuracy" in metrics:
            lines.append(
                f"held-out ({metrics['heldout_file']}) accuracy "
                f"{metrics['heldout_accuracy']:.4f}, macro-F1 {metrics['heldout_macro_f1']:.4f} "
                f"vs majority-class baseline {metrics['heldout_majority_accuracy']:.4f}, "
                f"bag-of-words naive Bayes {metrics['heldout_bag_of_words_accuracy']:.4f}")
        return lines

    # -- export --------------------------------------------------------------------

    def export(self, model, out_dir):
        """The SavedModel: raw text in; `logits`, `probabilities` `[B,
        classes]`, `label_ids` int32 `[B]` and `labels` string `[B]` out."""
        super().export(LabelledClassifier(model, self.label_names), out_dir)


def _joined(text):
    """A text, or a sentence pair joined by a space (for the bag of words)."""
    return text if isinstance(text, str) else " ".join(text)


def _constant_macro_f1(labels, predicted, num_classes):
    """Macro-F1 of always predicting `predicted` (over the classes present,
    as `ClassificationReport`)."""
    report = ClassificationReport(num_classes)
    report.update_state(labels, np.full_like(labels, predicted))
    return report.report()["macro_f1"]
