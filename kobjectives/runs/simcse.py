"""The SimCSE runs behind `kobjectives train simcse` and `kobjectives train
contrastive_aug` (and `kobjectives tune`).

One run, three models on the same backbone and tokenizer, so the comparison
is fair:

1. `untrained`: the randomly initialized backbone, mean-pooled;
2. `mlm`: the backbone after a short masked-LM training on the same text
   (`[mlm]`), mean-pooled;
3. the contrastive encoder: SimCSE (unsupervised dropout views, supervised
   NLI triples with `contrastive.mode = "supervised"`, or EDA views with
   `contrastive.augmentation = "text"`, the `contrastive_aug` recipe)
   trained from the untrained weights (from the masked-LM weights with
   `mlm.warm_start`), pooled as `contrastive.pooling` says; with
   `contrastive.freeze_token_embedding` its token vectors stay fixed.

Each is scored on STS-B dev (Spearman of cosine vs gold,
`evaluation.sts_dev`) where given, and always on held-out text: alignment
and uniformity (Wang & Isola, 2020) and recall@1 of retrieving a text's
augmented view (10% deletion, fixed seed) among all held-out texts
(`kobjectives.metrics.evaluate_embeddings`).

Examples:

    kobjectives train simcse --set evaluation.sts_dev=../shared/data/stsb/sts-dev.csv
    kobjectives train simcse --set contrastive.mode=supervised \\
        --data ../shared/data/nli/nli_triples_dev.tsv \\
        --set evaluation.sts_dev=../shared/data/stsb/sts-dev.csv
    kobjectives train contrastive_aug --set evaluation.sts_dev=../shared/data/stsb/sts-dev.csv
"""

import dataclasses
import os
import pathlib
import time

from kobjectives.data.pipelines import augmented_views
from kobjectives.data.pipelines import contrastive_dataset
from kobjectives.data.pipelines import masked_lm_dataset
from kobjectives.data.pipelines import tokenized_texts
from kobjectives.data.sts import RESERVED_STSB_FILES
from kobjectives.data.sts import read_nli_triples
from kobjectives.data.sts import read_stsb
from kobjectives.data.sts import split_nli_triples
from kobjectives.data.sts import split_sentences
from kobjectives.layers import MaskedLMMasker
from kobjectives.layers import TextAugmenter
from kobjectives.metrics.sts import STSEvaluator
from kobjectives.metrics.sts import evaluate_embeddings
from kobjectives.objectives import ContrastiveEncoder
from kobjectives.objectives import MaskedLanguageModel
from kobjectives.objectives.contrastive_encoder import ENCODER_POOLING
from kobjectives.recipe import DataConfig
from kobjectives.recipe import ModelConfig
from kobjectives.recipe import Recipe
from kobjectives.recipe import Section
from kobjectives.recipe import TokenizerConfig
from kobjectives.recipe import TrainingConfig
from kobjectives.recipe import option
from kobjectives.recipe import section
from kobjectives.runs import register
from kobjectives.runs.run import Run

# Held-out texts with a fixed augmented view (10% deletion) for the
# alignment / uniformity / recall@1 scores.
HELDOUT_VIEW_TEXTS = 1000
HELDOUT_DELETION_RATE = 0.1
NLI_EXAMPLE = "../shared/data/nli/nli_triples_dev.tsv"


@dataclasses.dataclass(frozen=True)
class SentenceDataConfig(DataConfig):
    """Where the text comes from, split into sentences (or NLI triples).

    Unsupervised, the documents are split into sentences: the training and
    held-out texts. Supervised (`contrastive.mode = "supervised"`), `files`
    is one NLI triples TSV."""

    max_sentences: int = option(
        0, "keep a seeded random subset of this many sentences (0 = all sentences split "
        "from the documents)", within="[0, inf)")
    min_characters: int = option(
        20, "sentence fragments shorter than this are dropped", within="[1, inf)")
    max_characters: int = option(
        300, "longer sentences are cut at a word boundary", within="[1, inf)")

    def check(self):
        yield from super().check()
        if self.min_characters > self.max_characters:
            yield (f"min_characters = {self.min_characters}: at most data.max_characters = "
                   f"{self.max_characters}")


@dataclasses.dataclass(frozen=True)
class MaskedLMBaselineConfig(Section):
    """The masked-LM checkpoint: a baseline (and the warm start with warm_start).

    Mean-pooled, it is the second baseline; with `warm_start` contrastive
    training starts from it."""

    warm_start: bool = option(
        False, "true: contrastive training starts from the masked-LM weights (measured: "
        "a warm start on the embedded corpus lowers STS-B dev Spearman); false: the "
        "masked LM trains its own copy of the backbone")
    steps: int = option(800, "masked-LM steps (0: the untrained copy is the baseline)",
                        within="[0, inf)")
    batch_size: int = option(64, "masked-LM batch size", within="[1, inf)")
    learning_rate: float = option(1e-3, "AdamW's peak learning rate (weight decay 0.01)",
                                  within="(0, 1]")
    warmup_steps: int = option(80, "linear warm-up steps, then cosine decay to 0",
                               within="[0, inf)")
    mask_selection_length: int = option(
        6, "prediction slots per sequence (15% of the tokens are masked, BERT 80/10/10)",
        within="[1, inf)")


@dataclasses.dataclass(frozen=True)
class ContrastiveConfig(Section):
    """The contrastive encoder (ContrastiveEncoder) and its views."""

    mode: str = option(
        "unsupervised", "'unsupervised': views of the sentences; 'supervised': NLI triples "
        f"(anchor, entailment, contradiction as hard negative) from data.files, e.g. "
        f"{NLI_EXAMPLE}", choices=("unsupervised", "supervised"))
    augmentation: str = option(
        "dropout", "unsupervised views: 'dropout' (SimCSE: the text twice, other dropout "
        "noise) or 'text' (EDA views, kobjectives.layers.TextAugmenter)",
        choices=("dropout", "text"))
    pooling: str = option(
        "weighted_mean", "'cls', 'mean', 'last' or 'weighted_mean' (mean with a learned "
        "weight per token id)", choices=ENCODER_POOLING)
    projection: bool = option(True, "SimCSE's dense + tanh projection, in training only")
    temperature: float = option(
        0.1, "InfoNCE temperature (0.05, SimCSE's, makes the dropout task trivial here)",
        within="(0, inf)")
    freeze_token_embedding: bool = option(
        True, "keep the backbone's token vectors (the lexical signal of a random "
        "backbone) fixed; see docs/contrastive.md")
    deletion_rate: float = option(0.1, "augmentation = 'text': per-token deletion rate",
                                  within="[0, 1]")
    insertion_rate: float = option(0.0, "augmentation = 'text': per-token insertion rate",
                                   within="[0, 1]")
    replacement_rate: float = option(
        0.0, "augmentation = 'text': per-token random replacement rate", within="[0, 1]")
    swap_rate: float = option(0.0, "augmentation = 'text': adjacent swap rate", within="[0, 1]")

    def check(self):
        if self.mode == "supervised" and self.augmentation == "text":
            yield ("augmentation = 'text': text augmentation makes views of unlabeled text; "
                   "it does not apply with contrastive.mode = 'supervised'")


@dataclasses.dataclass(frozen=True)
class EvaluationConfig(Section):
    """What the encoders are scored on, besides the held-out views."""

    sts_dev: str = option(
        "", "an STS-B file to score every model on (Spearman of cosine vs gold), e.g. "
        "../shared/data/stsb/sts-dev.csv; empty: held-out views only. sts-test.csv is "
        "reserved for final evaluation")

    def check(self):
        if not self.sts_dev:
            return
        path = pathlib.Path(os.path.expanduser(self.sts_dev))
        if path.name in RESERVED_STSB_FILES:
            yield (f"sts_dev = {self.sts_dev!r}: {path.name} is reserved for final "
                   "evaluation; evaluate the run on sts-dev.csv")

    def file_checks(self):
        if self.sts_dev and not os.path.isfile(os.path.expanduser(self.sts_dev)):
            yield f"sts_dev = {self.sts_dev!r}: no such file"


@dataclasses.dataclass(frozen=True)
class SimCSERecipe(Recipe):
    """SimCSE (Gao et al., 2021): contrastive sentence embeddings from dropout
    views, trained from the untrained backbone; a short masked LM on a copy of
    the same backbone is the second baseline (`mlm.warm_start` starts from it).

    Measured (STS-B dev, docs/contrastive.md), this default (learned
    token-weighted mean pooling, frozen token vectors, temperature 0.1, 300
    steps at 1e-4), seeds 0 / 1 / 2: 0.662 / 0.677 / 0.682 vs untrained
    0.640 / 0.648 / 0.653 and masked LM 0.509 / 0.502 / 0.508. With plain
    mean pooling the margin over the untrained backbone (a lexical-overlap
    score) stayed within the +-0.01 seed spread."""

    data: SentenceDataConfig = section(SentenceDataConfig)
    tokenizer: TokenizerConfig = section(TokenizerConfig, vocabulary_size=8000)
    model: ModelConfig = section(ModelConfig, backbone="bert_tiny", sequence_length=32,
                                 dropout=0.1)
    mlm: MaskedLMBaselineConfig = section(MaskedLMBaselineConfig)
    contrastive: ContrastiveConfig = section(ContrastiveConfig)
    evaluation: EvaluationConfig = section(EvaluationConfig)
    # The contrastive phase; longer / faster moves the encoder toward
    # docstring similarity.
    training: TrainingConfig = section(TrainingConfig, steps=300, epochs=3, batch_size=64,
                                       learning_rate=1e-4, warmup_steps=40)

    def check(self):
        yield from super().check()
        if self.mlm.mask_selection_length > self.model.sequence_length:
            yield (f"mlm.mask_selection_length = {self.mlm.mask_selection_length}: at most "
                   f"model.sequence_length = {self.model.sequence_length}")


@dataclasses.dataclass(frozen=True)
class ContrastiveAugRecipe(SimCSERecipe):
    """Augmentation-based contrastive LM: SimCSE's InfoNCE on two EDA views of
    each sentence (deletion, insertion, swap, replacement;
    `kobjectives.layers.TextAugmenter`), trained from the untrained backbone
    with learned token-weighted mean pooling.

    Measured (STS-B dev, seed 0): 0.646 vs untrained 0.640 and masked LM 0.509
    (0.634 with plain mean pooling); one seed, a margin inside the +-0.01 seed
    spread (docs/contrastive.md)."""

    contrastive: ContrastiveConfig = section(
        ContrastiveConfig, augmentation="text", temperature=0.05, insertion_rate=0.05,
        replacement_rate=0.05, swap_rate=0.05, freeze_token_embedding=False)
    training: TrainingConfig = section(TrainingConfig, steps=400, epochs=4, batch_size=64,
                                       learning_rate=1e-4, warmup_steps=40)


@register
class SimCSERun(Run):
    """`kobjectives train simcse`: a `ContrastiveEncoder` scored against the
    untrained and the masked-LM backbone (see the module docstring).

    Its metrics.json holds, for the trained encoder (`trained_`) and the
    baselines (`untrained_`, `mlm_meanpool_`), the held-out view scores
    (`*_heldout`: alignment, uniformity, recall@1) and with
    `evaluation.sts_dev` the STS Spearman (`stsb_dev_spearman`,
    `untrained_spearman`, `mlm_meanpool_spearman`) and the STS pairs'
    alignment and uniformity.
    """

    name = "simcse"
    recipe_class = SimCSERecipe
    title = "SimCSE"
    # The SavedModel serves text as it was trained: special-token literals
    # in the text are not interpreted.
    export_options = {"special_tokens_in_strings": False}
    search_space = {
        "training.learning_rate": ("float", 1e-5, 1e-3, "log"),
        "training.warmup_steps": ("int", 0, 100),
        "training.weight_decay": ("float", 0.0, 0.1, "linear"),
        "contrastive.temperature": ("float", 0.02, 0.2, "log"),
        "model.dropout": ("choice", [0.05, 0.1, 0.15]),
    }

    @property
    def supervised(self):
        return self.recipe.contrastive.mode == "supervised"

    def check(self):
        """Supervised, `data.files` is one NLI file that exists (skipped when
        a finished run folder is reloaded: its data need not exist any more)."""
        yield from super().check()
        files = self.recipe.data.files
        if self.supervised and (
                len(files) != 1 or not os.path.isfile(os.path.expanduser(files[0]))):
            yield (f"data.files = {list(files)!r}: contrastive.mode = 'supervised' trains on "
                   "NLI triples: give exactly one TSV file (columns anchor, positive, "
                   f"hard_negative; e.g. {NLI_EXAMPLE})")

    # -- data --------------------------------------------------------------------

    def prepare(self):
        """The base's preparation (texts, split, tokenizer), then the
        held-out texts with their fixed views and the STS evaluator."""
        super().prepare()
        validation = self.validation_documents
        # Supervised, the held-out texts are the validation triples' anchors.
        self.heldout = list(dict.fromkeys(validation["anchor"])) if self.supervised \
            else validation
        tokenizer = self.tokenizer
        augmenter = TextAugmenter(
            tokenizer.vocabulary_size(), deletion_rate=HELDOUT_DELETION_RATE,
            unselectable_token_ids=sorted(set(tokenizer.special_token_ids)),
            padding_token_id=tokenizer.pad_token_id,
        )
        self.heldout_views = augmented_views(
            self.heldout[:HELDOUT_VIEW_TEXTS], tokenizer, self.recipe.model.sequence_length,
            augmenter)
        sts_dev = self.recipe.evaluation.sts_dev
        self.sts = STSEvaluator(read_stsb(os.path.expanduser(sts_dev))) if sts_dev else None

    def load_documents(self):
        """The sentences of `[data]`'s documents (`split_sentences`), or
        supervised the NLI triples of `data.files[0]`."""
        data = self.recipe.data
        if self.supervised:
            triples = read_nli_triples(os.path.expanduser(data.files[0]))
            self.log(f"data: {len(triples['anchor'])} NLI triples from {data.files[0]}")
            return triples
        documents = super().load_documents()
        sentences = split_sentences(
            documents, data.min_characters, data.max_characters,
            max_sentences=data.max_sentences or None, seed=self.split_seed())
        self.log(f"data: {len(documents)} documents -> {len(sentences)} sentences")
        return sentences

    def split_documents(self, documents):
        if self.supervised:
            return split_nli_triples(
                documents, self.recipe.data.validation_fraction, seed=self.split_seed())
        return super().split_documents(documents)

    def document_counts(self):
        if self.supervised:
            return {"train": len(self.train_documents["anchor"]),
                    "validation": len(self.validation_documents["anchor"])}
        return super().document_counts()

    def sentences(self, texts=None):
        """The distinct sentences of `texts` (default the training texts):
        what the tokenizer and the masked-LM baseline learn from."""
        texts = self.train_documents if texts is None else texts
        if isinstance(texts, dict):
            rows = zip(texts["anchor"], texts["positive"], texts["negative"])
            return list(dict.fromkeys(text for row in rows for text in row))
        return texts

    def train_tokenizer(self, documents):
        return super().train_tokenizer(self.sentences(documents))

    def make_augmenter(self, seed):
        """The training views' `TextAugmenter` (`augmentation = "text"`), else None."""
        config, tokenizer = self.recipe.contrastive, self.tokenizer
        if config.augmentation != "text":
            return None
        return TextAugmenter(
            tokenizer.vocabulary_size(), deletion_rate=config.deletion_rate,
            insertion_rate=config.insertion_rate, replacement_rate=config.replacement_rate,
            swap_rate=config.swap_rate,
            unselectable_token_ids=sorted(set(tokenizer.special_token_ids)),
            padding_token_id=tokenizer.pad_token_id, seed=seed,
        )

    def make_dataset(self, split, batch_size, input_context=None):
        """Contrastive `x` batches (`contrastive_dataset`): `"train"` shuffled
        and repeated; `"validation"` the held-out texts (triples when
        supervised) in order, views seeded apart from training's. Under an
        `input_context` each input pipeline takes every n-th batch."""
        training = split == "train"
        seed = self.recipe.training.seed + (0 if training else 1)
        dataset = contrastive_dataset(
            self.documents(split), self.tokenizer, self.recipe.model.sequence_length,
            batch_size, shuffle=training, repeat=training, seed=seed,
            augmenter=self.make_augmenter(seed),
        )
        if input_context is not None and input_context.num_input_pipelines > 1:
            dataset = dataset.shard(input_context.num_input_pipelines,
                                    input_context.input_pipeline_id)
        return dataset

    # -- model and loop ------------------------------------------------------------

    def build_objective(self):
        config = self.recipe.contrastive
        return ContrastiveEncoder(
            self.build_backbone(), pooling=config.pooling, projection=config.projection,
            temperature=config.temperature,
            freeze_token_embedding=config.freeze_token_embedding,
        )

    def objective_label(self, model):
        config = self.recipe.contrastive
        views = "NLI" if self.supervised else config.augmentation
        return f"ContrastiveEncoder ({config.mode}, {views} views, {config.pooling} pooling)"

    def fit(self, model, train, validation, callbacks):
        """Scores the untrained backbone, trains and scores the masked-LM
        baseline (on `model`'s backbone with `mlm.warm_start`, else on a copy),
        then trains `model` (the base loop)."""
        self.baselines = {"untrained": self.evaluate_encoder(
            "untrained (mean-pooled)", MaskedLanguageModel(model.backbone))}
        if self.recipe.mlm.warm_start:
            backbone = model.backbone
        else:
            with self.strategy.scope():
                backbone = self.build_backbone()
        masked_lm, self.mlm_loss = self.masked_lm_baseline(backbone)
        self.baselines["mlm_meanpool"] = self.evaluate_encoder(
            "masked LM (mean-pooled)", masked_lm)
        started = time.time()
        history = super().fit(model, train, validation, callbacks)
        self.log(f"contrastive training: {self.recipe.training.steps} steps, loss "
                 f"{history['loss'][0]:.3f} -> {history['loss'][-1]:.3f}, held-out loss "
                 f"{history['val_loss'][-1]:.3f} ({time.time() - started:.0f} s)")
        return history

    def masked_lm_baseline(self, backbone):
        """Trains `backbone` with masked LM on the training sentences
        (`[mlm]`); returns the `MaskedLanguageModel` and its loss history
        (None without steps)."""
        config, tokenizer = self.recipe.mlm, self.tokenizer
        if config.steps == 0:
            return MaskedLanguageModel(backbone), None
        started = time.time()
        seed = self.recipe.training.seed
        masker = MaskedLMMasker(
            vocabulary_size=tokenizer.vocabulary_size(), mask_selection_rate=0.15,
            mask_token_id=tokenizer.mask_token_id,
            mask_selection_length=config.mask_selection_length,
            unselectable_token_ids=sorted(set(tokenizer.special_token_ids)), seed=seed,
        )
        dataset = masked_lm_dataset(
            self.sentences(), tokenizer, masker, self.recipe.model.sequence_length,
            config.batch_size, repeat=True, seed=seed,
        )
        with self.strategy.scope():
            model = MaskedLanguageModel(backbone)
            model.compile(
                optimizer=self.optimizer(
                    steps=config.steps, learning_rate=config.learning_rate,
                    warmup_steps=config.warmup_steps, weight_decay=0.01),
                jit_compile=self.jit_compile(),
            )
        losses = model.fit(dataset, epochs=1, steps_per_epoch=config.steps, verbose=0,
                           shuffle=False).history["loss"]
        self.log(f"masked LM ({'warm start' if config.warm_start else 'baseline'}): "
                 f"{config.steps} steps, loss {losses[-1]:.3f} ({time.time() - started:.0f} s)")
        return model, losses

    # -- evaluation ------------------------------------------------------------------

    def pack_texts(self, texts):
        """Texts packed as in training (`[CLS] text [SEP]`), for embedding."""
        return tokenized_texts(texts, self.tokenizer, self.recipe.model.sequence_length)

    def evaluate_encoder(self, label, model):
        """`evaluate_embeddings` of `model` on the held-out views (and STS), logged."""
        result = evaluate_embeddings(model, self.heldout_views, self.sts, pack=self.pack_texts)
        sts = f"STS-B dev Spearman {result['sts']['spearman']:.4f}, " if "sts" in result else ""
        held = result["heldout"]
        self.log(f"{label}: {sts}held-out alignment {held['alignment']:.3f}, uniformity "
                 f"{held['uniformity']:.3f}, view recall@1 {held['recall@1']:.3f}")
        return result

    def evaluate(self, fitted):
        config = self.recipe.contrastive
        trained = self.evaluate_encoder(
            f"{config.mode} contrastive ({config.pooling}-pooled)", fitted.model)
        results = {"trained": trained, **self.baselines}
        metrics = {
            "mode": config.mode,
            "augmentation": "nli" if self.supervised else config.augmentation,
            "backbone": self.recipe.model.init or self.recipe.model.backbone,
            "pooling": config.pooling,
            "temperature": config.temperature,
            "freeze_token_embedding": config.freeze_token_embedding,
        }
        if self.sts is not None:
            metrics.update(
                stsb_dev_spearman=trained["sts"]["spearman"],
                untrained_spearman=results["untrained"]["sts"]["spearman"],
                mlm_meanpool_spearman=results["mlm_meanpool"]["sts"]["spearman"],
                sts_dev_file=self.recipe.evaluation.sts_dev,
            )
        for name, result in results.items():
            metrics[f"{name}_heldout"] = result["heldout"]
            if "sts" in result:
                metrics[f"{name}_sts_alignment"] = result["sts"]["alignment"]
                metrics[f"{name}_sts_uniformity"] = result["sts"]["uniformity"]
        metrics.update(
            mlm_steps=self.recipe.mlm.steps,
            # The last round's held-out loss (augmented views differ each pass).
            val_loss=fitted.history["val_loss"][-1],
            mlm_loss=self.mlm_loss,
            heldout_texts=len(self.heldout),
        )
        return metrics

    def summary(self, metrics):
        if "stsb_dev_spearman" not in metrics:
            return []
        return [f"STS-B dev Spearman: trained {metrics['stsb_dev_spearman']:.4f} vs untrained "
                f"{metrics['untrained_spearman']:.4f} and masked-LM mean-pooled "
                f"{metrics['mlm_meanpool_spearman']:.4f}"]


@register
class ContrastiveAugRun(SimCSERun):
    """`kobjectives train contrastive_aug`: `simcse` on two EDA views of each
    sentence (`ContrastiveAugRecipe`)."""

    name = "contrastive_aug"
    recipe_class = ContrastiveAugRecipe
    title = "contrastive LM (EDA views)"
