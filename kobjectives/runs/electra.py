"""The ELECTRA run behind `kobjectives train electra` (and `kobjectives tune electra`)."""

import dataclasses

from kobjectives import backbones
from kobjectives.data.pipelines import ELECTRA_X_KEYS
from kobjectives.metrics import baselines
from kobjectives.metrics.replaced_token_metrics import rtd_statistics
from kobjectives.objectives import ElectraPretrainer
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
from kobjectives.runs.mlm import ignore_pooler_warning


@dataclasses.dataclass(frozen=True)
class ElectraModelConfig(ModelConfig):
    """The discriminator (exported) and the smaller generator sharing its token embeddings.

    The discriminator is `backbone` or `init`; the generator a smaller
    backbone of the same kind with the `generator_*` sizes."""

    generator_hidden_dim: int = option(
        32, "the generator's hidden size (ELECTRA-Small: 1/4 of the discriminator's)",
        within="[1, inf)")
    generator_num_heads: int = option(1, "the generator's attention heads (divide "
                                      "generator_hidden_dim)", within="[1, inf)")
    generator_intermediate_dim: int = option(128, "the generator's feed-forward size",
                                             within="[1, inf)")
    generator_num_layers: int = option(
        2, "the generator's layers (its token embeddings are the discriminator's)",
        within="[1, inf)")

    def check(self):
        yield from super().check()
        if self.generator_hidden_dim % self.generator_num_heads:
            yield (f"generator_num_heads = {self.generator_num_heads}: must divide "
                   f"model.generator_hidden_dim = {self.generator_hidden_dim}")

    def generator_sizes(self):
        """The generator's config overrides (`hidden_dim`, `num_heads`, ...)."""
        return {"hidden_dim": self.generator_hidden_dim, "num_heads": self.generator_num_heads,
                "intermediate_dim": self.generator_intermediate_dim,
                "num_layers": self.generator_num_layers}


@dataclasses.dataclass(frozen=True)
class ElectraConfig(Section):
    """The two losses and the generator's sampling."""

    generator_weight: float = option(1.0, "weight of the generator's masked-LM loss",
                                     within="[0, inf)")
    discriminator_weight: float = option(
        50.0, "weight of the replaced-token detection loss (the paper's lambda)",
        within="[0, inf)")
    temperature: float = option(
        3.0, "sampling temperature of the generator's softmax. ELECTRA: 1.0; at 1.0 the "
        "samples match the data's unigram distribution and a 1,000-step discriminator "
        "cannot catch them yet (docs/electra.md)", within="(0, inf)")
    disallow_correct: bool = option(False, "never sample the original token")

    def check(self):
        if self.generator_weight == 0 and self.discriminator_weight == 0:
            yield ("discriminator_weight = 0.0: electra.generator_weight and "
                   "electra.discriminator_weight are both 0, nothing would be trained "
                   "(ELECTRA uses 1 and 50)")


@dataclasses.dataclass(frozen=True)
class ElectraRecipe(Recipe):
    """ELECTRA replaced-token detection (Clark et al., 2020) on the embedded corpus:
    a small masked-LM generator fills 15% of the tokens with samples, and the
    discriminator (what gets exported) tells every token original or replaced."""

    data: DataConfig = section(DataConfig)
    tokenizer: TokenizerConfig = section(TokenizerConfig)
    model: ElectraModelConfig = section(ElectraModelConfig, backbone="electra_tiny",
                                        sequence_length=64)
    # ELECTRA: 85% [MASK], 15% kept, no random tokens.
    masking: MaskingConfig = section(MaskingConfig, mask_token_rate=0.85, random_token_rate=0.0)
    electra: ElectraConfig = section(ElectraConfig)
    training: TrainingConfig = section(TrainingConfig)


def _shares_embeddings(config, generator_hidden_dim):
    """Whether a generator of `generator_hidden_dim` built from the backbone
    `config` can share its token embeddings: the embedding size is separate
    (`embedding_dim`, as ELECTRA's) or the generator is as wide."""
    return "embedding_dim" in config or config.get("hidden_dim") == generator_hidden_dim


@register
class ElectraRun(MaskedLMRun):
    """`kobjectives train electra`: an `ElectraPretrainer` on masked packed
    windows (the masked-LM run's masks, in `x`); held-out RTD accuracy, AUC
    and loss next to the all-"original" and constant-prior baselines,
    generator accuracy next to the unigram baseline. Exports the
    discriminator alone (its preset and SavedModel).

    With `model.init` the discriminator is the init's backbone; the preset
    holds no generator, so the generator is a new backbone of the init's
    class and config (its vocabulary, embedding size and sequence length)
    with the `model.generator_*` sizes, sharing the init's token embeddings
    (a class whose embedding size follows `hidden_dim`, as BERT's, needs
    `model.generator_hidden_dim` equal to its hidden size).
    """

    name = "electra"
    recipe_class = ElectraRecipe
    title = "ELECTRA"
    # Trials are compared on `val_loss`, so only settings that leave the task
    # and the loss scale alone are searched: the loss weights, the sampling
    # temperature and the generator's size change what `val_loss` measures
    # (a weaker generator makes replacements easier to spot).
    search_space = {
        "training.learning_rate": ("float", 2e-4, 3e-3, "log"),
        "training.warmup_steps": ("int", 0, 200),
        "training.weight_decay": ("float", 1e-3, 0.1, "log"),
        "model.dropout": ("choice", [0.0, 0.1]),
    }
    # The batches are `x` alone: the objective reads its targets from it.
    x_keys = ELECTRA_X_KEYS
    target_keys = None
    export_options = {"special_tokens_in_strings": False}

    def check(self):
        problems = list(super().check())
        yield from problems
        model = self.recipe.model
        if problems:
            return
        if model.init:
            config, source = (backbones.preset_config(model.init) or {}).get("config"), \
                f"model.init = {model.init!r}"
        else:
            config, source = backbones.BACKBONES[model.backbone][1], \
                f"model.backbone = {model.backbone!r}"
        if config is not None and not _shares_embeddings(config, model.generator_hidden_dim):
            yield (f"model.generator_hidden_dim = {model.generator_hidden_dim}: the backbone of "
                   f"{source} ties its token embedding size to its hidden_dim "
                   f"({config['hidden_dim']}), so a narrower generator cannot share its token "
                   "embeddings. Use backbone 'electra_tiny' (embedding_dim is separate) or set "
                   f"model.generator_hidden_dim={config['hidden_dim']}.")

    def build_objective(self):
        ignore_pooler_warning()
        model, electra = self.recipe.model, self.recipe.electra
        discriminator = self.build_backbone()
        if model.init:
            config = {**discriminator.get_config(), **model.generator_sizes()}
            config.pop("name", None)
            generator = type(discriminator).from_config(config)
        else:
            generator = self.build_backbone(**model.generator_sizes())
        return ElectraPretrainer(
            generator,
            discriminator,
            generator_weight=electra.generator_weight,
            discriminator_weight=electra.discriminator_weight,
            temperature=electra.temperature,
            disallow_correct=electra.disallow_correct,
            seed=self.recipe.training.seed,
        )

    def describe(self, model):
        return (f"ElectraPretrainer, discriminator "
                f"{self.recipe.model.init or self.recipe.model.backbone} "
                f"({model.discriminator.count_params():,} parameters), generator hidden "
                f"{self.recipe.model.generator_hidden_dim} "
                f"({model.generator.count_params():,}, token embeddings shared)")

    def evaluate(self, fitted):
        model, evaluation = fitted.model, fitted.evaluation
        tp, fp, fn, tn = model.rtd_accuracy.confusion_counts()  # of the last evaluate
        tokens = tp + fp + fn + tn
        replaced_fraction = (tp + fn) / tokens if tokens else 0.0
        unigram_id = baselines.most_frequent_token(self.tokenizer, self.train_documents)
        validation = self.make_dataset("validation", self.recipe.training.batch_size)
        unigram = baselines.constant_prediction_accuracy(
            unigram_id, ((x["mask_ids"], x["mask_weights"]) for x in validation))
        threshold_free = rtd_statistics(model, validation)
        return {
            "backbone": self.recipe.model.init or self.recipe.model.backbone,
            "generator_hidden_dim": self.recipe.model.generator_hidden_dim,
            "val_loss": evaluation["loss"],
            "val_rtd_accuracy": evaluation["rtd_accuracy"],
            "all_original_rtd_accuracy": 1.0 - replaced_fraction,
            "val_replaced_precision": evaluation["replaced_precision"],
            "val_replaced_recall": evaluation["replaced_recall"],
            "val_replaced_fraction": replaced_fraction,
            "val_rtd_auc": threshold_free["rtd_auc"],
            "chance_rtd_auc": 0.5,
            "val_rtd_loss_second_pass": threshold_free["rtd_loss"],
            "prior_rtd_loss_second_pass": threshold_free["prior_rtd_loss"],
            "val_discriminator_loss": evaluation["discriminator_loss"],
            "val_generator_loss": evaluation["generator_loss"],
            "val_generator_accuracy": evaluation["generator_accuracy"],
            "unigram_generator_accuracy": unigram,
            "unigram_token": self.vocabulary[unigram_id],
        }

    def summary(self, metrics):
        return [
            f"held-out RTD AUC {metrics['val_rtd_auc']:.4f} vs chance 0.5; discriminator loss "
            f"{metrics['val_rtd_loss_second_pass']:.4f} vs constant-prior loss "
            f"{metrics['prior_rtd_loss_second_pass']:.4f}",
            f"held-out RTD accuracy {metrics['val_rtd_accuracy']:.4f} vs all-original baseline "
            f"{metrics['all_original_rtd_accuracy']:.4f} (replaced precision "
            f"{metrics['val_replaced_precision']:.3f}, recall "
            f"{metrics['val_replaced_recall']:.3f}); generator accuracy "
            f"{metrics['val_generator_accuracy']:.4f} vs unigram baseline "
            f"{metrics['unigram_generator_accuracy']:.4f}",
        ]
