"""The denoising seq2seq runs behind `kobjectives train t5` (T5 span
corruption) and `kobjectives train bart` (BART noising): a
`DenoisingSeq2Seq` over an encoder-decoder backbone; held-out target
perplexity and token accuracy next to a unigram baseline (and, for BART,
copying baselines)."""

import dataclasses
import pathlib
import warnings

import keras
import keras_hub

from kobjectives import backbones
from kobjectives import data as data_lib
from kobjectives.data.seq2seq import bart_noising_dataset
from kobjectives.data.seq2seq import span_corruption_dataset
from kobjectives.data.tokenizers import SENTINEL_TOKEN_FORMAT
from kobjectives.export.seq2seq import export_seq2seq_saved_model
from kobjectives.layers import BartNoising
from kobjectives.layers import SpanCorruption
from kobjectives.metrics import denoising_baselines
from kobjectives.objectives import DenoisingSeq2Seq
from kobjectives.ops.span_corruption import merge_span_corruption
from kobjectives.ops.span_corruption import raw_length_for_inputs_length
from kobjectives.ops.span_corruption import span_corruption_lengths
from kobjectives.recipe import DataConfig
from kobjectives.recipe import ModelConfig
from kobjectives.recipe import Recipe
from kobjectives.recipe import RecipeError
from kobjectives.recipe import Section
from kobjectives.recipe import TokenizerConfig
from kobjectives.recipe import TrainingConfig
from kobjectives.recipe import option
from kobjectives.recipe import section
from kobjectives.runs import register
from kobjectives.runs.run import Run

# -- recipe sections ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Seq2SeqDataConfig(DataConfig):
    """Where the text comes from, how it is split and cut into windows."""

    pack_documents: bool = option(
        False, "concatenate documents into full windows (T5's reduce_concat_tokens + "
        "split_tokens) instead of one document per window")


@dataclasses.dataclass(frozen=True)
class Seq2SeqModelConfig(ModelConfig):
    """The encoder-decoder backbone, built from config or started from `init`."""

    reinitialize_t5_embedding: bool = option(
        False, "keras-hub's T5 embedding starts at mean 1 (all tokens alike): redraw it from "
        "N(0, 1/hidden_dim), logits at scale 1 (with model.init: no redraw, the init was "
        "trained so)")


@dataclasses.dataclass(frozen=True)
class SpanCorruptionConfig(Section):
    """T5 span corruption (`kobjectives.layers.SpanCorruption`)."""

    noise_density: float = option(0.15, "fraction of tokens corrupted (T5: 0.15)",
                                  within="(0, 1)")
    mean_noise_span_length: float = option(3.0, "mean noise span length (T5: 3.0)",
                                           within="[1, inf)")
    num_sentinels: int = option(
        100, "sentinels <extra_id_0> .. <extra_id_N-1>, appended at the top of the trained "
        "vocabulary (on top of tokenizer.vocabulary_size)", within="[1, 100000]")


@dataclasses.dataclass(frozen=True)
class BartNoisingConfig(Section):
    """BART noising (`kobjectives.layers.BartNoising`), in its order.

    Sentence permutation, text infilling, token deletion, document rotation.
    """

    text_infilling_rate: float = option(
        0.3, "fraction of tokens covered by masked spans (BART: 0.3)", within="[0, 1]")
    poisson_lambda: float = option(
        3.0, "span lengths ~ Poisson(lambda); each span becomes one [MASK]", within="(0, 1000]")
    token_deletion_rate: float = option(0.0, "fraction of tokens deleted", within="[0, 1]")
    sentence_permutation_rate: float = option(
        1.0, "fraction of the sentences shuffled (BART: 1.0)", within="[0, 1]")
    document_rotation_rate: float = option(
        0.0, "probability of rotating a sequence to start at a random token", within="[0, 1]")

    def check(self):
        total = self.text_infilling_rate + self.token_deletion_rate
        if total > 1.0:
            yield (f"token_deletion_rate = {self.token_deletion_rate}: text_infilling_rate + "
                   f"token_deletion_rate = {total} must be <= 1")


# -- recipes --------------------------------------------------------------------

_TRAINING = dict(epochs=8, learning_rate=2e-3, warmup_steps=100)


@dataclasses.dataclass(frozen=True)
class _Seq2SeqRecipe(Recipe):
    """A denoising recipe: its `lengths()` (defined by each recipe) must be
    computable."""

    def check(self):
        yield from super().check()
        try:
            self.lengths()
        except RecipeError as error:
            yield str(error)


@dataclasses.dataclass(frozen=True)
class T5Recipe(_Seq2SeqRecipe):
    """T5 span corruption (denoising seq2seq) on the embedded corpus."""

    data: Seq2SeqDataConfig = section(Seq2SeqDataConfig, pack_documents=True)
    tokenizer: TokenizerConfig = section(TokenizerConfig)
    model: Seq2SeqModelConfig = section(
        Seq2SeqModelConfig, backbone="t5_tiny", sequence_length=64,
        reinitialize_t5_embedding=True)
    corruption: SpanCorruptionConfig = section(SpanCorruptionConfig)
    training: TrainingConfig = section(TrainingConfig, steps=1000, **_TRAINING)

    def lengths(self):
        """The run's static lengths: `raw_length` (tokens read per sequence),
        `encoder_length` (`model.sequence_length`, sentinels and EOS included)
        and `target_length`, as T5's `compute_input_and_target_lengths`.

        Raises:
            RecipeError: the sequence is too short, or has more noise spans
                than sentinels (naming the key).
        """
        length, corruption = self.model.sequence_length, self.corruption
        density, span = corruption.noise_density, corruption.mean_noise_span_length
        try:
            raw = raw_length_for_inputs_length(length, density, span)
        except ValueError:
            raise RecipeError(
                f"model.sequence_length = {length}: too short for span corruption (two raw "
                "tokens, a sentinel and EOS need more); use a longer sequence.") from None
        encoder_length, target_length, spans = span_corruption_lengths(raw, density, span)
        if spans > corruption.num_sentinels:
            raise RecipeError(
                f"corruption.num_sentinels = {corruption.num_sentinels}: sequences of {raw} "
                f"tokens get up to {spans} noise spans; raise it to at least {spans}.")
        return {"raw_length": raw, "encoder_length": length, "target_length": target_length}


@dataclasses.dataclass(frozen=True)
class BartRecipe(_Seq2SeqRecipe):
    """BART denoising (text infilling + sentence permutation) on the embedded corpus."""

    data: Seq2SeqDataConfig = section(Seq2SeqDataConfig)
    tokenizer: TokenizerConfig = section(TokenizerConfig)
    model: Seq2SeqModelConfig = section(Seq2SeqModelConfig, backbone="bart_tiny",
                                        sequence_length=64)
    noising: BartNoisingConfig = section(BartNoisingConfig)
    training: TrainingConfig = section(TrainingConfig, steps=800, **_TRAINING)

    def lengths(self):
        """The run's static lengths: `raw_length` (`model.sequence_length - 2`
        tokens, then `[CLS] tokens [SEP]`), `encoder_length` and
        `target_length` (both `model.sequence_length`).

        Raises:
            RecipeError: `model.sequence_length` is under 4.
        """
        length = self.model.sequence_length
        if length < 4:
            raise RecipeError(
                f"model.sequence_length = {length}: too short for BART noising; use at least 4.")
        return {"raw_length": length - 2, "encoder_length": length, "target_length": length}


# -- the runs -------------------------------------------------------------------

# A special token's id: the keras-hub tokenizer's attribute, else the
# WordPiece token (kobjectives.data.tokenizers: [PAD]=0 [UNK] [CLS] [SEP] [MASK]).
SPECIAL_TOKENS = {
    "pad": ("pad_token_id", "[PAD]"),
    "start": ("start_token_id", "[CLS]"),
    "end": ("end_token_id", "[SEP]"),
    "mask": ("mask_token_id", "[MASK]"),
}


def special_token_id(tokenizer, role):
    """The id of `role` (`"pad"`, `"start"`, `"end"`, `"mask"`) in
    `tokenizer`: its keras-hub attribute (`pad_token_id`, ...) or its
    WordPiece token (`[PAD]`, ...); None where it has neither."""
    attribute, token = SPECIAL_TOKENS[role]
    value = getattr(tokenizer, attribute, None)
    if value is not None:
        return int(value)
    try:
        return int(tokenizer.token_to_id(token))
    except (KeyError, ValueError):
        return None


def _quiet():
    # keras-hub's T5 attention layers warn about Keras masks they ignore.
    warnings.filterwarnings(
        "ignore", message=r"Layer '.*attention' .* was passed an input with a mask")


class DenoisingRun(Run):
    """What the T5 and BART runs share: the WordPiece tokenizer that reads
    its special tokens in text, the datasets of `(x, target_ids,
    target_weights)`, the `DenoisingSeq2Seq`, the held-out metrics and
    baselines, and the SavedModel (`kobjectives.export.seq2seq`).

    A subclass sets `special_roles` (the special tokens it needs),
    `decoder_start` (the role of the decoder's first input) and implements
    `make_corruption` and `corrupted_dataset`.
    """

    backbone_kind = "seq2seq"
    search_space = {
        "training.learning_rate": ("float", 3e-4, 3e-3, "log"),
        "training.warmup_steps": ("int", 0, 300),
        "training.weight_decay": ("float", 1e-3, 0.1, "log"),
        "model.dropout": ("choice", [0.0, 0.1]),
    }
    special_roles = ("pad", "end")
    decoder_start = "pad"

    # -- checks and tokenizer --------------------------------------------------

    def check(self):
        problems = list(super().check())
        yield from problems
        init = self.recipe.model.init
        if init and not problems and backbones.preset_config(init) is not None:
            for problem in self.tokenizer_problems(backbones.load_tokenizer(init)):
                yield f"model.init = {init!r}: {problem}"

    def tokenizer_problems(self, tokenizer):
        """What `tokenizer` lacks for this run (its special tokens); yields lines."""
        for role in self.special_roles:
            if special_token_id(tokenizer, role) is None:
                attribute, token = SPECIAL_TOKENS[role]
                yield (f"its tokenizer has no {role} token ({token}, or a `{attribute}`): "
                       f"the {self.name!r} run needs {', '.join(self.special_roles)}")

    def extend_vocabulary(self, vocabulary):
        """The trained vocabulary with the run's own special tokens appended
        (T5: the sentinels); the base adds none."""
        return list(vocabulary)

    def train_tokenizer(self, documents):
        """A WordPiece vocabulary (`extend_vocabulary` appends the run's own
        special tokens) as a keras-hub `WordPieceTokenizer` that reads every
        special token written in text (`[MASK]`, `<extra_id_0>`)."""
        config = self.recipe.tokenizer
        trained = data_lib.train_wordpiece(
            documents, config.vocabulary_size, lowercase=config.lowercase,
            max_training_documents=config.max_training_documents or None,
        )
        vocabulary = self.extend_vocabulary(trained)
        return keras_hub.tokenizers.WordPieceTokenizer(
            vocabulary=vocabulary, lowercase=config.lowercase, oov_token="[UNK]",
            special_tokens=[*data_lib.WORDPIECE_RESERVED_TOKENS, *vocabulary[len(trained):]],
            special_tokens_in_strings=True,
        )

    def prepare(self):
        _quiet()
        lengths = self.recipe.lengths()
        self.log(f"lengths: {lengths['raw_length']} tokens read per sequence, encoder "
                 f"{lengths['encoder_length']}, target {lengths['target_length']}")
        super().prepare()
        problems = list(self.tokenizer_problems(self.tokenizer))
        if problems:
            raise RecipeError(
                f"model.init = {self.recipe.model.init!r}: " + "; ".join(problems))

    def token_id(self, role):
        """The tokenizer's id of a special `role` (`SPECIAL_TOKENS`)."""
        return special_token_id(self.tokenizer, role)

    def excluded_ids(self):
        """The target ids that are not text: padding, start, end (and T5's
        sentinels)."""
        ids = (self.token_id(role) for role in ("pad", "start", "end"))
        return tuple(i for i in ids if i is not None)

    # -- data ------------------------------------------------------------------

    def make_corruption(self):
        """The run's corruption layer (`SpanCorruption`, `BartNoising`)."""
        raise NotImplementedError

    def corrupted_dataset(self, documents, batch_size, shuffle, repeat, seed, cache=False):
        """`documents` -> `(x, target_ids, target_weights)` batches
        (`kobjectives.data.seq2seq`)."""
        raise NotImplementedError

    def make_dataset(self, split, batch_size, input_context=None):
        """`(x, target_ids, target_weights)` batches: `"train"` shuffled,
        repeated, a fresh corruption every epoch; `"validation"` at most
        `training.validation_batches` batches with a fixed corruption."""
        documents = self.documents(split, input_context)
        seed = self.recipe.training.seed
        if split == "train":
            return self.corrupted_dataset(documents, batch_size, True, True, seed)
        dataset = self.corrupted_dataset(
            documents, batch_size, False, False, seed + 1, cache=True,
        ).take(self.recipe.training.validation_batches)
        return self.finite_validation(dataset, len(documents), batch_size)

    # -- model -----------------------------------------------------------------

    def build_objective(self):
        _quiet()
        model = self.recipe.model
        lengths = self.recipe.lengths()
        backbone = self.build_backbone(
            sequence_length=max(lengths["encoder_length"], lengths["target_length"]))
        logit_scale = "auto"
        if model.reinitialize_t5_embedding:
            logit_scale = backbones.reinitialize_t5_embedding(backbone, redraw=not model.init)
        return DenoisingSeq2Seq(
            backbone, decoder_start_token_id=self.token_id(self.decoder_start),
            padding_token_id=self.token_id("pad"), logit_scale=logit_scale)

    def objective_label(self, model):
        return f"DenoisingSeq2Seq ({self.name})"

    # -- evaluation ------------------------------------------------------------

    def evaluate(self, fitted):
        batch_size = self.recipe.training.batch_size
        validation = self.make_dataset("validation", batch_size)
        excluded = self.excluded_ids()
        vocabulary = self.vocabulary
        baseline = denoising_baselines.unigram_baseline(
            self.make_dataset("train", batch_size), validation, len(vocabulary), excluded)
        content, content_any = denoising_baselines.content_token_accuracy(
            fitted.model, validation, excluded)
        example = self.example(fitted.model, validation)
        evaluation = fitted.evaluation
        return {
            "backbone": self.recipe.model.init or self.recipe.model.backbone,
            "val_loss": evaluation["loss"],
            "val_perplexity": evaluation["perplexity"],
            "val_token_accuracy": evaluation["token_accuracy"],
            "unigram_perplexity": baseline["perplexity"],
            "unigram_token_accuracy": baseline["token_accuracy"],
            "unigram_token": vocabulary[baseline["token"]],
            # The same accuracy over the text tokens alone (no sentinels, EOS,
            # [CLS]): arg-max among text tokens (told the position is text, as
            # the constant baseline is), and arg-max over the whole vocabulary.
            "val_content_token_accuracy": content,
            "val_content_token_accuracy_any_token": content_any,
            "unigram_content_token_accuracy": baseline["content_token_accuracy"],
            "unigram_content_token": vocabulary[baseline["content_token"]],
            **self.copy_metrics(validation, excluded),
            "lengths": self.recipe.lengths(),
            "example": example,
        }

    def copy_metrics(self, validation, excluded):
        """Baselines of the run's own (BART: copying); the base has none."""
        return {}

    def merged_prediction(self, encoder_ids, predicted_ids):
        """The predicted target read back into the encoder input (T5); None."""
        return None

    def example(self, model, validation):
        """One held-out example with the model's teacher-forced arg-max
        target, as text (T5: also merged back into the sentence)."""
        vocabulary, pad = self.vocabulary, self.token_id("pad")
        x, targets, weights = next(iter(validation))
        predicted = keras.ops.convert_to_numpy(
            keras.ops.argmax(model(x, training=False), axis=-1))[0]
        n = int(keras.ops.convert_to_numpy(weights)[0].sum())

        def text(ids):
            return " ".join(vocabulary[i] for i in ids if i != pad).replace(" ##", "")

        encoder = [int(i) for i in keras.ops.convert_to_numpy(x["encoder_token_ids"])[0]
                   if i != pad]
        example = {
            "encoder_input": text(encoder),
            "target": text(keras.ops.convert_to_numpy(targets)[0][:n]),
            "predicted_target": text(predicted[:n]),
        }
        merged = self.merged_prediction(encoder, predicted[:n])
        if merged is not None:
            example["merged_prediction"] = text(merged)
        return example

    def summary(self, metrics):
        return [
            f"held-out target token accuracy {metrics['val_token_accuracy']:.4f}, perplexity "
            f"{metrics['val_perplexity']:.2f} vs unigram baseline accuracy "
            f"{metrics['unigram_token_accuracy']:.4f} (always {metrics['unigram_token']!r}), "
            f"perplexity {metrics['unigram_perplexity']:.2f}; on the text tokens alone "
            f"{metrics['val_content_token_accuracy']:.4f} (arg-max over all tokens "
            f"{metrics['val_content_token_accuracy_any_token']:.4f}) vs "
            f"{metrics['unigram_content_token_accuracy']:.4f} "
            f"(always {metrics['unigram_content_token']!r})"
        ]

    # -- export ----------------------------------------------------------------

    def export(self, model, out_dir):
        """Writes `out_dir/saved_model/` (`export_seq2seq_saved_model`):
        `serving_default` takes `text` (the corrupted text; T5 sentinels
        `<extra_id_k>` and `[MASK]` may be written in it) and
        `decoder_token_ids`, and returns `logits` and
        `encoder_sequence_output`, float32."""
        _quiet()
        keras.mixed_precision.set_global_policy("float32")
        export_seq2seq_saved_model(
            model, pathlib.Path(out_dir) / "saved_model", tokenizer=self.tokenizer,
            encoder_sequence_length=self.recipe.lengths()["encoder_length"],
            eos_token_id=self.token_id("end"), overwrite=True,
        )


@register
class T5Run(DenoisingRun):
    """`kobjectives train t5`: T5 span corruption. Noise spans of the
    windows are replaced by sentinels `<extra_id_k>` (appended at the top of
    the vocabulary); the decoder predicts each sentinel and its span."""

    name = "t5"
    recipe_class = T5Recipe
    title = "denoising seq2seq (t5)"

    def sentinel_tokens(self):
        """`<extra_id_0>`, ..., `<extra_id_{N-1}>` (`corruption.num_sentinels`)."""
        return [SENTINEL_TOKEN_FORMAT.format(k)
                for k in range(self.recipe.corruption.num_sentinels)]

    def tokenizer_problems(self, tokenizer):
        yield from super().tokenizer_problems(tokenizer)
        vocabulary = set(tokenizer.get_vocabulary())
        missing = [token for token in self.sentinel_tokens() if token not in vocabulary]
        if missing:
            yield (f"its tokenizer lacks {len(missing)} of the corruption.num_sentinels = "
                   f"{len(self.sentinel_tokens())} sentinel tokens (first missing: "
                   f"{missing[0]!r}); start from a t5 run's folder, or lower "
                   "corruption.num_sentinels")

    def extend_vocabulary(self, vocabulary):
        return data_lib.add_sentinel_tokens(vocabulary, self.recipe.corruption.num_sentinels)

    def sentinel_ids(self):
        """The sentinels' ids, `<extra_id_0>` first."""
        return tuple(int(self.tokenizer.token_to_id(token)) for token in self.sentinel_tokens())

    def excluded_ids(self):
        return (*super().excluded_ids(), *self.sentinel_ids())

    def make_corruption(self):
        corruption, lengths = self.recipe.corruption, self.recipe.lengths()
        return SpanCorruption(
            noise_density=corruption.noise_density,
            mean_noise_span_length=corruption.mean_noise_span_length,
            vocabulary_size=self.tokenizer.vocabulary_size(),
            sentinel_ids=self.sentinel_ids(),
            sequence_length=lengths["raw_length"],
            inputs_length=lengths["encoder_length"],
            eos_token_id=self.token_id("end"),
            padding_token_id=self.token_id("pad"),
            seed=self.recipe.training.seed,
        )

    def corrupted_dataset(self, documents, batch_size, shuffle, repeat, seed, cache=False):
        return span_corruption_dataset(
            documents, self.tokenizer, self.make_corruption(), batch_size, shuffle=shuffle,
            repeat=repeat, seed=seed, cache=cache,
            pack_documents=self.recipe.data.pack_documents)

    def merged_prediction(self, encoder_ids, predicted_ids):
        return merge_span_corruption(
            encoder_ids, predicted_ids, self.sentinel_ids(), self.token_id("end"),
            self.token_id("pad"))


@register
class BartRun(DenoisingRun):
    """`kobjectives train bart`: BART noising. The target is the window
    `[CLS] tokens [SEP]`, the encoder reads its noised copy (sentences
    shuffled, spans masked); next to the unigram baseline, two copying
    baselines (`kobjectives.metrics.denoising_baselines.copy_baselines`)."""

    name = "bart"
    recipe_class = BartRecipe
    title = "denoising seq2seq (bart)"
    special_roles = ("pad", "start", "end", "mask")
    # BART starts decoding from </s> ([SEP] here).
    decoder_start = "end"

    def make_corruption(self):
        noising, vocabulary = self.recipe.noising, self.vocabulary
        return BartNoising(
            mask_token_id=self.token_id("mask"),
            sequence_length=self.recipe.lengths()["encoder_length"],
            text_infilling_rate=noising.text_infilling_rate,
            poisson_lambda=noising.poisson_lambda,
            token_deletion_rate=noising.token_deletion_rate,
            sentence_permutation_rate=noising.sentence_permutation_rate,
            document_rotation_rate=noising.document_rotation_rate,
            sentence_end_token_ids=[vocabulary.index(t) for t in (".", "?", "!")
                                    if t in vocabulary],
            unselectable_token_ids=tuple(self.token_id(role) for role in self.special_roles),
            vocabulary_size=len(vocabulary),
            seed=self.recipe.training.seed,
        )

    def corrupted_dataset(self, documents, batch_size, shuffle, repeat, seed, cache=False):
        return bart_noising_dataset(
            documents, self.tokenizer, self.make_corruption(), batch_size,
            start_token_id=self.token_id("start"), end_token_id=self.token_id("end"),
            padding_token_id=self.token_id("pad"), shuffle=shuffle, repeat=repeat, seed=seed,
            cache=cache, pack_documents=self.recipe.data.pack_documents)

    def copy_metrics(self, validation, excluded):
        metrics = {}
        baselines = denoising_baselines.copy_baselines(
            validation, self.token_id("mask"), excluded)
        for name, values in baselines.items():
            metrics[f"{name}_token_accuracy"] = values["token_accuracy"]
            metrics[f"{name}_content_token_accuracy"] = values["content_token_accuracy"]
        return metrics

    def summary(self, metrics):
        return [
            *super().summary(metrics),
            f"copying baselines: the noised input as output {metrics['copy_token_accuracy']:.4f} "
            f"(text {metrics['copy_content_token_accuracy']:.4f}), pointer copy "
            f"{metrics['pointer_copy_token_accuracy']:.4f} "
            f"(text {metrics['pointer_copy_content_token_accuracy']:.4f})",
        ]
