"""The permutation-LM (XLNet) run behind `kobjectives train xlnet` (and
`kobjectives tune xlnet`)."""

import dataclasses

from kobjectives.data.pipelines import PERMUTATION_LM_X_KEYS
from kobjectives.data.pipelines import finish
from kobjectives.data.pipelines import masked_lm_dataset
from kobjectives.layers import PermutationLMMasker
from kobjectives.metrics import baselines
from kobjectives.objectives import PermutationLanguageModel
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

_TARGET_KEYS = ("target_ids", "target_weights")


@dataclasses.dataclass(frozen=True)
class PermutationLMConfig(Section):
    """The permutation-LM targets and factorization orders
    (`kobjectives.layers.PermutationLMMasker`)."""

    plm_probability: float = option(1 / 6, "share of the tokens to predict (XLNet: 1/6)",
                                    within="(0, 1]")
    max_span_length: int = option(5, "targets come in spans of U{1..max_span_length} tokens",
                                  within="[1, inf)")
    num_predict: int = option(
        16, "prediction slots per sequence (the most targets; at most model.sequence_length)",
        within="[1, inf)")
    permutation_size: int = option(
        0, "0: one random order of the whole sequence; k: XLNet's local permutation over "
        "blocks of k tokens (k divides model.sequence_length)", within="[0, inf)")


@dataclasses.dataclass(frozen=True)
class PermutationLMRecipe(Recipe):
    """Permutation LM (XLNet, Yang et al., 2019) on the embedded corpus: spans of 1..5
    tokens, 1/6 of them, predicted in a random factorization order."""

    data: DataConfig = section(DataConfig)
    tokenizer: TokenizerConfig = section(TokenizerConfig)
    model: ModelConfig = section(ModelConfig, backbone="xlnet_tiny", sequence_length=64,
                                 dropout=0.1)
    plm: PermutationLMConfig = section(PermutationLMConfig)
    # XLA on CPU makes keras-hub's relative attention ~4x slower (0.88 vs
    # 0.20 CPU s/step): jit_compile is off by default; turn it on for GPU/TPU.
    training: TrainingConfig = section(
        TrainingConfig, steps=1200, epochs=6, batch_size=32, learning_rate=1e-3,
        warmup_steps=120, jit_compile=False)

    def check(self):
        yield from super().check()
        plm, length = self.plm, self.model.sequence_length
        if length < 4:
            yield (f"model.sequence_length = {length}: a permutation LM needs at least 4 "
                   "([CLS], two tokens, [SEP])")
        if plm.num_predict > length:
            yield (f"plm.num_predict = {plm.num_predict}: at most model.sequence_length = "
                   f"{length}")
        if plm.permutation_size and length % plm.permutation_size:
            yield (f"plm.permutation_size = {plm.permutation_size}: must divide "
                   f"model.sequence_length = {length} (or be 0: one permutation of the whole "
                   "sequence)")


@register
class PermutationLMRun(Run):
    """`kobjectives train xlnet`: a `PermutationLanguageModel` over keras-hub's
    `XLNetBackbone` on packed windows; held-out target perplexity and
    accuracy next to the unigram baseline. Serves `plm_logits`, the
    prediction at each `[MASK]` of raw text."""

    name = "xlnet"
    recipe_class = PermutationLMRecipe
    title = "permutation LM (XLNet)"
    backbone_kind = "permutation"
    # `plm.*` change the training targets; every trial is scored on the
    # fixed validation targets of the base recipe.
    search_space = {
        "training.learning_rate": ("float", 2e-4, 3e-3, "log"),
        "training.warmup_steps": ("int", 0, 300),
        "model.dropout": ("choice", [0.0, 0.1]),
        "plm.plm_probability": ("float", 0.1, 0.25, "linear"),
        "plm.max_span_length": ("int", 1, 8),
    }

    def make_masker(self):
        """The run's `PermutationLMMasker`, configured by `[plm]`."""
        plm, tokenizer = self.recipe.plm, self.tokenizer
        return PermutationLMMasker(
            plm_probability=plm.plm_probability,
            max_span_length=plm.max_span_length,
            num_predict=plm.num_predict,
            permutation_size=plm.permutation_size or None,
            unselectable_token_ids=sorted(set(tokenizer.special_token_ids)),
            padding_token_id=tokenizer.pad_token_id,
            seed=self.recipe.training.seed,
        )

    def make_dataset(self, split, batch_size, input_context=None):
        """`(x, target_ids, target_weights)` batches: `"train"` shuffled,
        repeated, new targets and orders every epoch; `"validation"` at most
        `training.validation_batches` batches with fixed targets."""
        documents = self.documents(split, input_context)
        training = split == "train"
        seed = self.recipe.training.seed + (0 if training else 1)
        dataset = masked_lm_dataset(
            documents, self.tokenizer, self.make_masker(), self.recipe.model.sequence_length,
            batch_size, shuffle=training, repeat=training, seed=seed,
            x_keys=PERMUTATION_LM_X_KEYS, target_keys=_TARGET_KEYS,
        )
        if training:
            return dataset
        # Take before caching, so the cache is complete after one pass and every
        # pass sees the same targets and orders.
        dataset = finish(dataset.take(self.recipe.training.validation_batches), cache=True)
        return self.finite_validation(dataset, len(documents), batch_size)

    def build_objective(self):
        return PermutationLanguageModel(self.build_backbone(),
                                        mask_token_id=self.tokenizer.mask_token_id)

    def evaluate(self, fitted):
        counts = baselines.token_counts(self.tokenizer, self.train_documents)
        unigram_id = int(counts.argmax())
        validation = self.make_dataset("validation", self.recipe.training.batch_size)
        targets = [(y, w) for _, y, w in validation]
        evaluation = fitted.evaluation
        return {
            "backbone": self.recipe.model.init or self.recipe.model.backbone,
            "val_loss": evaluation["loss"],
            "val_perplexity": evaluation["perplexity"],
            "val_target_accuracy": evaluation["masked_accuracy"],
            "unigram_target_accuracy": baselines.constant_prediction_accuracy(
                unigram_id, targets),
            "unigram_perplexity": baselines.unigram_perplexity(
                baselines.unigram_log_probs(counts, self.tokenizer.special_token_ids), targets),
            "unigram_token": self.vocabulary[unigram_id],
        }

    def summary(self, metrics):
        return [
            f"held-out perplexity {metrics['val_perplexity']:.2f} vs unigram baseline "
            f"{metrics['unigram_perplexity']:.2f}; target accuracy "
            f"{metrics['val_target_accuracy']:.4f} vs unigram baseline "
            f"{metrics['unigram_target_accuracy']:.4f} (always {metrics['unigram_token']!r})"
        ]
