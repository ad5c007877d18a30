"""The causal-LM run behind `kobjectives train clm` (and `kobjectives tune clm`)."""

import dataclasses
import pathlib

import keras_hub

from kobjectives import backbones
from kobjectives import data as data_lib
from kobjectives.data.pipelines import causal_lm_dataset
from kobjectives.export import PromptPreprocessor
from kobjectives.export import TextGenerator
from kobjectives.layers import SequencePacker
from kobjectives.metrics import baselines
from kobjectives.metrics.causal_lm_metrics import causal_lm_statistics
from kobjectives.objectives import CausalLanguageModel
from kobjectives.objectives.causal_language_model import document_attention_unsupported
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
class CausalLMConfig(Section):
    """The next-token loss and the packing of documents into windows."""

    chunk_size: int = option(
        1024, "positions whose [chunk, vocabulary] logits exist at once", within="[1, inf)")
    label_smoothing: float = option(0.0, "label smoothing of the next-token loss",
                                    within="[0, 1)")
    start_token: bool = option(
        True, "prepend [CLS] to every document, so its first token is a target")
    reset_attention: bool = option(
        True, "reset attention too at document boundaries (a block-diagonal causal mask; "
        "GPT-2 and Llama backbones only): every document is encoded as if it were alone")
    restart_positions: bool = option(
        True, "with reset_attention: learned positions (GPT-2) restart at 0 at each document")


@dataclasses.dataclass(frozen=True)
class EvaluationConfig(Section):
    """Held-out data scored after training, besides the validation split."""

    test_data: str = option(
        "", "a text file scored after training, read like data.files (e.g. a reserved "
        "test split; empty: none)")

    def file_checks(self):
        if self.test_data and not pathlib.Path(self.test_data).expanduser().is_file():
            yield (f"test_data = {self.test_data!r}: not a file. Give a text file, or leave "
                   "it empty to skip the test evaluation")


@dataclasses.dataclass(frozen=True)
class CausalLMRecipe(Recipe):
    """Causal (next-token) LM on the embedded corpus: documents packed into windows,
    the loss and the attention reset at document boundaries."""

    data: DataConfig = section(DataConfig)
    tokenizer: TokenizerConfig = section(TokenizerConfig, max_training_documents=2000)
    model: ModelConfig = section(ModelConfig, backbone="gpt2_tiny", sequence_length=128,
                                 dropout=0.0)
    clm: CausalLMConfig = section(CausalLMConfig)
    evaluation: EvaluationConfig = section(EvaluationConfig)
    training: TrainingConfig = section(
        TrainingConfig, steps=800, epochs=4, batch_size=16, learning_rate=2e-3,
        warmup_steps=100)


@register
class CausalLMRun(Run):
    """`kobjectives train clm`: a `CausalLanguageModel` on packed windows;
    held-out token perplexity and next-token accuracy next to the unigram
    baseline, on the packed validation windows, on the validation documents
    one per window (the serving regime) and, with `evaluation.test_data`, on
    that file. Serves raw prompts (`kobjectives.export.PromptPreprocessor`)."""

    name = "clm"
    recipe_class = CausalLMRecipe
    title = "causal LM"
    backbone_kind = "causal"
    search_space = {
        "training.learning_rate": ("float", 3e-4, 5e-3, "log"),
        "training.warmup_steps": ("int", 0, 300),
        "training.weight_decay": ("float", 1e-3, 0.1, "log"),
        "model.dropout": ("choice", [0.0, 0.1]),
    }
    # Serve text tokenized exactly as in training ("[SEP]" in a prompt is
    # not the separator).
    export_options = {"special_tokens_in_strings": False}
    # The documents of `evaluation.test_data` (`prepare` reads them).
    test_documents = None

    def check(self):
        problems = list(super().check())
        yield from problems
        if self.recipe.clm.reset_attention and not problems:
            yield from self._reset_attention_problems()

    def _reset_attention_problems(self):
        """`clm.reset_attention` with a decoder that cannot take a
        per-document attention mask (Gemma's)."""
        model = self.recipe.model
        if model.init:
            class_name = (backbones.preset_config(model.init) or {}).get("class_name", "")
            cls = getattr(keras_hub.models, class_name, None)
            source = f"model.init = {model.init!r} (a {class_name})"
        else:
            cls = backbones.BACKBONES[model.backbone][0]
            source = f"model.backbone = {model.backbone!r}"
        reason = document_attention_unsupported(cls) if cls is not None else None
        if reason:
            yield (f"clm.reset_attention = true cannot be used with {source}: {reason} Set "
                   "clm.reset_attention = false (the loss is still reset at document "
                   "boundaries) or use a GPT-2 or Llama backbone (gpt2_tiny, gpt2_small, "
                   "llama_tiny).")

    def prepare(self):
        """The base's documents and tokenizer, and the documents of
        `evaluation.test_data`."""
        super().prepare()
        path = self.recipe.evaluation.test_data
        if path:
            self.test_documents = data_lib.load_texts(data=path, format=self.recipe.data.format)
            self.log(f"test data: {len(self.test_documents)} documents from {path}")

    def make_packer(self):
        """The run's `SequencePacker`: `[CLS] document [SEP]` packed into
        windows of `model.sequence_length` (the layout keras-hub's BERT
        preprocessors give a single text, so serving sees what training saw)."""
        tokenizer = self.tokenizer
        return SequencePacker(
            sequence_length=self.recipe.model.sequence_length,
            end_token_id=tokenizer.end_token_id,
            start_token_id=tokenizer.start_token_id if self.recipe.clm.start_token else None,
            pad_token_id=tokenizer.pad_token_id,
        )

    def make_dataset(self, split, batch_size, input_context=None):
        """Packed `x` batches: `"train"` shuffled, repeated; `"validation"` at
        most `training.validation_batches` batches, cached."""
        documents = self.documents(split, input_context)
        packer = self.make_packer()
        if split == "train":
            return causal_lm_dataset(documents, self.tokenizer, packer, batch_size, repeat=True,
                                     seed=self.recipe.training.seed)
        dataset = causal_lm_dataset(
            documents, self.tokenizer, packer, batch_size, shuffle=False, cache=True,
        ).take(self.recipe.training.validation_batches)
        return self.finite_validation(dataset, len(documents), batch_size)

    def build_objective(self):
        clm = self.recipe.clm
        return CausalLanguageModel(
            self.build_backbone(),
            chunk_size=clm.chunk_size,
            label_smoothing=clm.label_smoothing,
            reset_attention_at_boundaries=clm.reset_attention,
            restart_positions=clm.restart_positions,
        )

    def evaluate(self, fitted):
        batch_size = self.recipe.training.batch_size
        unigram = baselines.unigram_log_probs(
            baselines.token_counts(self.tokenizer, self.train_documents, end_token=True))
        held_out = causal_lm_statistics(
            fitted.model, self.make_dataset("validation", batch_size), unigram)
        # The same held-out documents one per window: no context from a
        # neighbouring document (the serving regime).
        alone = causal_lm_statistics(fitted.model, self.finite_documents(
            self.validation_documents, batch_size, documents_per_group=1), unigram)
        metrics = {
            "backbone": self.recipe.model.init or self.recipe.model.backbone,
            "sequence_length": self.recipe.model.sequence_length,
            "val_loss": fitted.evaluation["loss"],
            "val_perplexity": held_out["perplexity"],
            "val_next_token_accuracy": held_out["next_token_accuracy"],
            "unigram_perplexity": held_out["unigram_perplexity"],
            "unigram_accuracy": held_out["unigram_accuracy"],
            "val_tokens": held_out["tokens"],
            "reset_attention": self.recipe.clm.reset_attention,
            "val_documents_alone": {key: alone[key] for key in (
                "perplexity", "next_token_accuracy", "unigram_perplexity", "unigram_accuracy",
                "tokens")},
            "perplexity_unit": "per WordPiece token of the run's tokenizer (vocab.txt)",
        }
        if self.test_documents is not None:
            test = causal_lm_statistics(
                fitted.model, self.finite_documents(self.test_documents, batch_size), unigram)
            metrics["test"] = dict(test, data=self.recipe.evaluation.test_data)
        return metrics

    def finite_documents(self, documents, batch_size, documents_per_group=256):
        """`documents` packed in order, every window once (the last batch
        may be smaller): for scoring."""
        return causal_lm_dataset(
            documents, self.tokenizer, self.make_packer(), batch_size, shuffle=False,
            drop_remainder=False, documents_per_group=documents_per_group)

    def summary(self, metrics):
        alone = metrics["val_documents_alone"]
        lines = [
            f"held-out perplexity {metrics['val_perplexity']:.2f} vs unigram baseline "
            f"{metrics['unigram_perplexity']:.2f}; next-token accuracy "
            f"{metrics['val_next_token_accuracy']:.4f} vs unigram baseline "
            f"{metrics['unigram_accuracy']:.4f} ({metrics['val_tokens']} tokens)",
            f"held-out documents one per window: perplexity {alone['perplexity']:.2f} vs "
            f"unigram baseline {alone['unigram_perplexity']:.2f} ({alone['tokens']} tokens)",
        ]
        if "test" in metrics:
            test = metrics["test"]
            lines.append(
                f"test ({test['data']}): perplexity {test['perplexity']:.2f} vs unigram "
                f"baseline {test['unigram_perplexity']:.2f} ({test['tokens']} tokens)")
        return lines

    def serving_preprocessor(self):
        """`PromptPreprocessor`: `[CLS] tokens`, no end token, so
        `next_token_logits` is the prediction after the text."""
        return PromptPreprocessor(self.tokenizer, self.recipe.model.sequence_length,
                                  self.recipe.clm.start_token)

    def text_generator(self, model):
        """Greedy continuation of raw text up to the end token (the
        SavedModel's `generate` signature)."""
        return TextGenerator(model, self.serving_preprocessor(), self.tokenizer,
                             stop_token_ids=[self.tokenizer.end_token_id])
