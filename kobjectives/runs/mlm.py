"""The masked-LM run behind `kobjectives train mlm` (and `kobjectives tune mlm`)."""

import dataclasses
import warnings

from kobjectives import data as data_lib
from kobjectives.data.pipelines import MASKED_LM_X_KEYS
from kobjectives.data.pipelines import masked_lm_dataset
from kobjectives.layers import MaskedLMMasker
from kobjectives.metrics import baselines
from kobjectives.objectives import MaskedLanguageModel
from kobjectives.recipe import DataConfig
from kobjectives.recipe import MaskingConfig
from kobjectives.recipe import ModelConfig
from kobjectives.recipe import Recipe
from kobjectives.recipe import TokenizerConfig
from kobjectives.recipe import TrainingConfig
from kobjectives.recipe import section
from kobjectives.runs import register
from kobjectives.runs.run import Run


@dataclasses.dataclass(frozen=True)
class MaskedLMRecipe(Recipe):
    """Masked language modeling (BERT 80/10/10) on the embedded corpus."""

    data: DataConfig = section(DataConfig)
    tokenizer: TokenizerConfig = section(TokenizerConfig)
    model: ModelConfig = section(ModelConfig, backbone="bert_tiny", sequence_length=64)
    masking: MaskingConfig = section(MaskingConfig)
    training: TrainingConfig = section(TrainingConfig, steps=1500, epochs=10, warmup_steps=150)


def ignore_pooler_warning():
    """Masked LM does not use BERT's pooler; Keras warns that it gets no gradient."""
    warnings.filterwarnings(
        "ignore", message=r"Gradients do not exist for variables \['pooled_dense"
    )


@register
class MaskedLMRun(Run):
    """`kobjectives train mlm`: a `MaskedLanguageModel` on masked packed
    windows; held-out perplexity and masked accuracy next to the unigram
    baseline (always the most frequent training token)."""

    name = "mlm"
    recipe_class = MaskedLMRecipe
    title = "masked LM"
    # `masking.*` change the training masks; every trial is scored on the
    # base recipe's fixed validation masks.
    search_space = {
        "training.learning_rate": ("float", 1e-4, 3e-3, "log"),
        "training.warmup_steps": ("int", 0, 300),
        "training.weight_decay": ("float", 1e-3, 0.1, "log"),
        "model.dropout": ("choice", [0.0, 0.1]),
        "masking.mask_selection_rate": ("float", 0.1, 0.25, "linear"),
    }
    # The masker's outputs that make `x` and `(y, sample_weight)` of the
    # batches (`masked_lm_dataset`; `target_keys = None`: `x` alone).
    x_keys = MASKED_LM_X_KEYS
    target_keys = ("mask_ids", "mask_weights")

    def make_masker(self):
        """The run's `MaskedLMMasker`, configured by `[masking]`."""
        masking, tokenizer = self.recipe.masking, self.tokenizer
        return MaskedLMMasker(
            vocabulary_size=tokenizer.vocabulary_size(),
            mask_selection_rate=masking.mask_selection_rate,
            mask_token_id=tokenizer.mask_token_id,
            mask_selection_length=masking.mask_selection_length,
            unselectable_token_ids=sorted(set(tokenizer.special_token_ids)),
            mask_token_rate=masking.mask_token_rate,
            random_token_rate=masking.random_token_rate,
            strategy=masking.strategy,
            continuation_token_ids=(
                data_lib.continuation_token_ids(self.vocabulary)
                if masking.strategy == "whole_word" else None
            ),
            seed=self.recipe.training.seed,
        )

    def make_dataset(self, split, batch_size, input_context=None):
        """Masked `(x, mask_ids, mask_weights)` batches: `"train"` shuffled,
        repeated, fresh masks every epoch; `"validation"` at most
        `training.validation_batches` batches with fixed masks."""
        documents = self.documents(split, input_context)
        seed = self.recipe.training.seed
        length = self.recipe.model.sequence_length
        masker = self.make_masker()
        keys = {"x_keys": self.x_keys, "target_keys": self.target_keys}
        if split == "train":
            return masked_lm_dataset(
                documents, self.tokenizer, masker, length, batch_size, repeat=True, seed=seed,
                **keys)
        dataset = masked_lm_dataset(
            documents, self.tokenizer, masker, length, batch_size, shuffle=False,
            seed=seed + 1, cache=True, **keys,
        ).take(self.recipe.training.validation_batches)
        return self.finite_validation(dataset, len(documents), batch_size)

    def build_objective(self):
        ignore_pooler_warning()
        return MaskedLanguageModel(self.build_backbone())

    def evaluate(self, fitted):
        unigram_id = baselines.most_frequent_token(self.tokenizer, self.train_documents)
        validation = self.make_dataset("validation", self.recipe.training.batch_size)
        unigram = baselines.constant_prediction_accuracy(
            unigram_id, ((y, w) for _, y, w in validation))
        evaluation = fitted.evaluation
        return {
            "backbone": self.recipe.model.init or self.recipe.model.backbone,
            "val_loss": evaluation["loss"],
            "val_perplexity": evaluation["perplexity"],
            "val_masked_accuracy": evaluation["masked_accuracy"],
            "unigram_masked_accuracy": unigram,
            "unigram_token": self.vocabulary[unigram_id],
        }

    def summary(self, metrics):
        return [
            f"held-out perplexity {metrics['val_perplexity']:.2f}, masked accuracy "
            f"{metrics['val_masked_accuracy']:.4f} vs unigram baseline "
            f"{metrics['unigram_masked_accuracy']:.4f} (always {metrics['unigram_token']!r})"
        ]
