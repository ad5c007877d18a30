"""The sentence-pair pretraining runs behind `kobjectives train bert` (masked
LM + next-sentence prediction) and `kobjectives train albert` (masked LM +
sentence-order prediction)."""

import dataclasses

import numpy as np

from kobjectives.data.sentences import sentence_documents
from kobjectives.data.sentences import sentence_pair_dataset
from kobjectives.export.preprocessors import PairTextPreprocessor
from kobjectives.layers import SentencePairGenerator
from kobjectives.metrics import baselines
from kobjectives.metrics.sentence_pair_metrics import pair_label_baselines
from kobjectives.objectives import SentencePairPretrainer
from kobjectives.recipe import DataConfig
from kobjectives.recipe import MaskingConfig
from kobjectives.recipe import ModelConfig
from kobjectives.recipe import Recipe
from kobjectives.recipe import Section
from kobjectives.recipe import TokenizerConfig
from kobjectives.recipe import TrainingConfig
from kobjectives.recipe import option
from kobjectives.recipe import section
from kobjectives.runs import register
from kobjectives.runs.mlm import MaskedLMRun


@dataclasses.dataclass(frozen=True)
class PairsConfig(Section):
    """The sentence pairs (`SentencePairGenerator`) and the two loss weights."""

    task: str = option(
        "nsp", "'nsp' (BERT: actual next vs random segment) or 'sop' (ALBERT: in order vs "
        "swapped)", choices=("nsp", "sop"))
    short_seq_prob: float = option(
        0.1, "share of pairs with a shorter target length, as BERT's "
        "create_pretraining_data.py", within="[0, 1]")
    negative_rate: float = option(0.5, "share of label 1 (random next / swapped)",
                                  within="[0, 1]")
    min_sentences: int = option(
        2, "documents with fewer sentences are dropped (SOP needs 2)", within="[1, inf)")
    mlm_weight: float = option(1.0, "weight of the masked-LM loss", within="[0, inf)")
    pair_weight: float = option(1.0, "weight of the NSP / SOP loss", within="[0, inf)")

    def check(self):
        if self.task == "sop" and self.min_sentences < 2:
            yield (f"min_sentences = {self.min_sentences}: sentence-order prediction needs "
                   "documents of >= 2 sentences (NSP: >= 1)")
        if self.mlm_weight == 0 and self.pair_weight == 0:
            yield ("pair_weight = 0.0: pairs.mlm_weight and pairs.pair_weight are both 0, "
                   "nothing would be trained (BERT uses 1.0 and 1.0)")


@dataclasses.dataclass(frozen=True)
class SentencePairRecipe(Recipe):
    """BERT pretraining: masked LM (80/10/10) + next-sentence prediction, on the
    embedded corpus (`pairs.task = "sop"` turns it into ALBERT's objective).
    Documents are split into sentences; `data.format = "paragraphs"` keeps
    multi-sentence documents of `data.files`. `model.sequence_length` holds
    `[CLS] A [SEP] B [SEP]` (64: at most 61 tokens of text); the 40
    validation batches are 1,280 held-out pairs, drawn over several passes
    over the validation documents."""

    data: DataConfig = section(DataConfig, validation_fraction=0.1, format="paragraphs")
    tokenizer: TokenizerConfig = section(TokenizerConfig)
    model: ModelConfig = section(ModelConfig, backbone="bert_tiny", sequence_length=64)
    pairs: PairsConfig = section(PairsConfig)
    masking: MaskingConfig = section(MaskingConfig, mask_selection_length=10)
    training: TrainingConfig = section(TrainingConfig, steps=1500, epochs=10, warmup_steps=150,
                                       validation_batches=40)

    def check(self):
        yield from super().check()
        if self.model.sequence_length < 5:
            yield (f"model.sequence_length = {self.model.sequence_length}: must be >= 5 "
                   "([CLS] A [SEP] B [SEP])")
        if self.training.batch_size < 2:
            yield (f"training.batch_size = {self.training.batch_size}: must be >= 2 (NSP draws "
                   "its random segments from the other documents of the batch)")


@dataclasses.dataclass(frozen=True)
class AlbertRecipe(SentencePairRecipe):
    """ALBERT pretraining: masked LM (80/10/10) + sentence-order prediction, on
    the embedded corpus (`pairs.task = "nsp"` turns it into BERT's
    objective); otherwise as `bert`."""

    model: ModelConfig = section(ModelConfig, backbone="albert_tiny", sequence_length=64)
    pairs: PairsConfig = section(PairsConfig, task="sop")


@register
class SentencePairRun(MaskedLMRun):
    """`kobjectives train bert`: a `SentencePairPretrainer` (masked LM + NSP)
    on one sentence pair per document; held-out pair accuracy next to the
    chance and majority baselines, masked accuracy next to the unigram
    baseline. Serves `"A [SEP] B"` strings (`PairTextPreprocessor`)."""

    name = "bert"
    recipe_class = SentencePairRecipe
    title = "masked LM + next-sentence prediction"
    search_space = {
        "training.learning_rate": ("float", 1e-4, 3e-3, "log"),
        "training.warmup_steps": ("int", 0, 300),
        "training.weight_decay": ("float", 1e-3, 0.1, "log"),
        "pairs.pair_weight": ("float", 0.25, 2.0, "log"),
        "pairs.short_seq_prob": ("choice", [0.0, 0.1, 0.2]),
    }
    # "[SEP]" in the served text is the pair separator, not a token.
    export_options = {"special_tokens_in_strings": False}

    def prepare(self):
        """The base's documents and tokenizer (trained on the raw training
        documents), then every document split into sentences, keeping those
        with `pairs.min_sentences`."""
        super().prepare()
        min_sentences = self.recipe.pairs.min_sentences
        self.train_documents = sentence_documents(self.train_documents, min_sentences)
        self.validation_documents = sentence_documents(self.validation_documents, min_sentences)
        self.log(f"sentences: {len(self.train_documents)} train and "
                 f"{len(self.validation_documents)} validation documents with >= "
                 f"{min_sentences} sentences ({sum(map(len, self.train_documents))} train "
                 "sentences)")

    def make_generator(self):
        """The run's `SentencePairGenerator`, configured by `[pairs]`."""
        pairs, tokenizer = self.recipe.pairs, self.tokenizer
        return SentencePairGenerator(
            task=pairs.task,
            sequence_length=self.recipe.model.sequence_length,
            start_value=tokenizer.cls_token_id,
            end_value=tokenizer.sep_token_id,
            pad_value=tokenizer.pad_token_id,
            short_seq_prob=pairs.short_seq_prob,
            negative_rate=pairs.negative_rate,
            seed=self.recipe.training.seed,
        )

    def make_dataset(self, split, batch_size, input_context=None):
        """`(x, y)` batches (`kobjectives.data.sentence_pair_dataset`): `"train"`
        shuffled, repeated, new pairs and masks every epoch; `"validation"`
        `training.validation_batches` batches drawn over as many passes over
        the validation documents as needed (each pass new pairs), then fixed.
        The dataset shards the documents by `input_context` itself."""
        documents = self.documents(split)
        seed = self.recipe.training.seed
        generator, masker = self.make_generator(), self.make_masker()
        if split == "train":
            return sentence_pair_dataset(
                documents, self.tokenizer, generator, masker, batch_size, repeat=True,
                seed=seed, input_context=input_context)
        pipelines = input_context.num_input_pipelines if input_context else 1
        if len(documents) // pipelines // batch_size == 0:
            raise ValueError(
                f"The validation split ({len(documents)} documents with enough sentences) is "
                f"smaller than one batch of {batch_size}. Give more data or raise "
                "data.validation_fraction.")
        dataset = sentence_pair_dataset(
            documents, self.tokenizer, generator, masker, batch_size, shuffle=True,
            repeat=True, seed=seed + 1, input_context=input_context,
        ).take(self.recipe.training.validation_batches).cache()
        return self.finite_validation(dataset, len(documents), batch_size)

    def build_objective(self):
        pairs = self.recipe.pairs
        return SentencePairPretrainer(
            self.build_backbone(), task=pairs.task, mlm_weight=pairs.mlm_weight,
            pair_weight=pairs.pair_weight)

    def objective_label(self, model):
        return f"SentencePairPretrainer ({self.recipe.pairs.task.upper()})"

    def evaluate(self, fitted):
        unigram_id = baselines.most_frequent_token(
            self.tokenizer, [" ".join(document) for document in self.train_documents])
        validation = self.make_dataset("validation", self.recipe.training.batch_size)
        unigram = baselines.constant_prediction_accuracy(
            unigram_id, ((y["mask_ids"], y["mask_weights"]) for _, y in validation))
        pairs = pair_label_baselines(y["pair_labels"] for _, y in validation)
        evaluation = fitted.evaluation
        return {
            "task": self.recipe.pairs.task,
            "backbone": self.recipe.model.init or self.recipe.model.backbone,
            "val_loss": evaluation["loss"],
            "val_pair_accuracy": evaluation["pair_accuracy"],
            "chance_pair_accuracy": 0.5,
            "majority_pair_accuracy": pairs["majority_pair_accuracy"],
            "val_pair_loss": evaluation["pair_loss"],
            "chance_pair_loss": float(np.log(2.0)),
            "val_masked_accuracy": evaluation["masked_accuracy"],
            "unigram_masked_accuracy": unigram,
            "unigram_token": self.vocabulary[unigram_id],
            "val_perplexity": evaluation["perplexity"],
            "val_mlm_loss": evaluation["mlm_loss"],
            "validation_pairs": pairs["pairs"],
            "validation_negative_fraction": pairs["negative_fraction"],
        }

    def summary(self, metrics):
        task = metrics["task"].upper()
        return [
            f"held-out {task} accuracy {metrics['val_pair_accuracy']:.4f} vs chance "
            f"baseline 0.5 (majority {metrics['majority_pair_accuracy']:.4f}, "
            f"{metrics['validation_pairs']} pairs); masked accuracy "
            f"{metrics['val_masked_accuracy']:.4f} vs unigram baseline "
            f"{metrics['unigram_masked_accuracy']:.4f}; perplexity {metrics['val_perplexity']:.1f}"
        ]

    def serving_preprocessor(self):
        """`"sentence A [SEP] sentence B"` strings -> `[CLS] A [SEP] B [SEP]`
        with segment ids (`PairTextPreprocessor`)."""
        return PairTextPreprocessor(self.tokenizer, self.recipe.model.sequence_length)


@register
class AlbertRun(SentencePairRun):
    """`kobjectives train albert`: as `bert`, with ALBERT's backbone and
    sentence-order prediction (`AlbertRecipe`)."""

    name = "albert"
    recipe_class = AlbertRecipe
    title = "masked LM + sentence-order prediction"
