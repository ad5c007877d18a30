"""The Contrastive Predictive Coding run behind `kobjectives train cpc` (and
`kobjectives tune cpc`)."""

import dataclasses

from kobjectives.data.pipelines import finish
from kobjectives.data.pipelines import packed_windows_dataset
from kobjectives.metrics.cpc_metrics import cpc_statistics
from kobjectives.objectives import ContrastivePredictiveCoding
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


@dataclasses.dataclass(frozen=True)
class CPCConfig(Section):
    """The CPC predictions and their InfoNCE scores."""

    max_offset: int = option(
        4, "predict 1..max_offset tokens ahead, one linear map W_k each (smaller than "
        "model.sequence_length)", within="[1, inf)")
    similarity: str = option("cosine", "the score of a prediction and an encoding ('dot': "
                             "the paper's log-bilinear score)", choices=("cosine", "dot"))
    temperature: float = option(0.1, "the scores are divided by it", within="(0, inf)")
    exclude_same_token: bool = option(
        True, "positions holding the positive's token are not its negatives")


@dataclasses.dataclass(frozen=True)
class CPCRecipe(Recipe):
    """Contrastive Predictive Coding (van den Oord et al., 2018) on the embedded corpus:
    a causal context network predicts the token encodings 1..max_offset steps ahead."""

    data: DataConfig = section(DataConfig)
    tokenizer: TokenizerConfig = section(TokenizerConfig, vocabulary_size=4000,
                                         max_training_documents=1000)
    model: ModelConfig = section(ModelConfig, backbone="gpt2_tiny", sequence_length=64,
                                 dropout=0.0)
    cpc: CPCConfig = section(CPCConfig)
    training: TrainingConfig = section(
        TrainingConfig, steps=400, epochs=4, batch_size=16, learning_rate=2e-3, warmup_steps=40)

    def check(self):
        yield from super().check()
        if self.cpc.max_offset >= self.model.sequence_length:
            yield (f"cpc.max_offset = {self.cpc.max_offset}: must be smaller than "
                   f"model.sequence_length = {self.model.sequence_length} (no position t "
                   "would have t + max_offset inside the window)")


@register
class CPCRun(Run):
    """`kobjectives train cpc`: `ContrastivePredictiveCoding` over a causal
    backbone on packed windows; held-out CPC accuracy (per offset) next to
    the chance baseline of its candidates. Serves the context and token
    encodings of raw text."""

    name = "cpc"
    recipe_class = CPCRecipe
    title = "contrastive predictive coding"
    backbone_kind = "causal"
    search_space = {
        "training.learning_rate": ("float", 3e-4, 5e-3, "log"),
        "cpc.temperature": ("float", 0.03, 0.5, "log"),
        "cpc.max_offset": ("int", 1, 8),
        "cpc.similarity": ("choice", ["cosine", "dot"]),
    }
    # Serve text tokenized exactly as in training ("[SEP]" in the text is
    # not the separator).
    export_options = {"special_tokens_in_strings": False}

    def make_dataset(self, split, batch_size, input_context=None):
        """`{"token_ids", "padding_mask", "segment_ids"}` packed windows:
        `"train"` shuffled, repeated; `"validation"` at most
        `training.validation_batches` batches, cached."""
        documents = self.documents(split, input_context)
        length = self.recipe.model.sequence_length
        if split == "train":
            return finish(packed_windows_dataset(
                documents, self.tokenizer, length, batch_size, seed=self.recipe.training.seed,
            ), repeat=True)
        dataset = finish(packed_windows_dataset(
            documents, self.tokenizer, length, batch_size, shuffle=False,
        ), cache=True).take(self.recipe.training.validation_batches)
        return self.finite_validation(dataset, len(documents), batch_size)

    def build_objective(self):
        cpc = self.recipe.cpc
        return ContrastivePredictiveCoding(
            self.build_backbone(),
            max_offset=cpc.max_offset,
            similarity=cpc.similarity,
            temperature=cpc.temperature,
            exclude_same_token=cpc.exclude_same_token,
        )

    def objective_label(self, model):
        return f"ContrastivePredictiveCoding (K={self.recipe.cpc.max_offset})"

    def evaluate(self, fitted):
        held_out = cpc_statistics(
            fitted.model, self.make_dataset("validation", self.recipe.training.batch_size))
        return {
            "backbone": self.recipe.model.init or self.recipe.model.backbone,
            "max_offset": self.recipe.cpc.max_offset,
            "val_loss": fitted.evaluation["loss"],
            "val_cpc_accuracy": fitted.evaluation["cpc_accuracy"],
            "val_cpc_accuracy_per_offset": held_out["accuracy_per_offset"],
            "chance_cpc_accuracy": held_out["chance_accuracy"],
            "chance_cpc_loss": held_out["chance_loss"],
        }

    def summary(self, metrics):
        per_offset = ", ".join(
            f"k={k + 1}: {a:.3f}"
            for k, a in enumerate(metrics["val_cpc_accuracy_per_offset"]) if a is not None)
        return [
            f"held-out CPC loss {metrics['val_loss']:.3f} (chance "
            f"{metrics['chance_cpc_loss']:.3f}), CPC accuracy "
            f"{metrics['val_cpc_accuracy']:.4f} vs chance baseline "
            f"{metrics['chance_cpc_accuracy']:.4f} ({per_offset})"
        ]
