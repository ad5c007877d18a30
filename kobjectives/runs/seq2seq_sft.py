"""The seq2seq supervised fine-tuning run behind `kobjectives train
seq2seq_sft`: a `DenoisingSeq2Seq` over a keras-hub T5 or BART backbone
trained on (input text, target text) pairs, the loss on the target tokens.
See `docs/sft.md` ("Seq2seq SFT")."""

import dataclasses
import json
import math
import pathlib

import keras
import keras_hub
import numpy as np

from kobjectives import backbones
from kobjectives import data as data_lib
from kobjectives.data.seq2seq_sft import dialogue_pair
from kobjectives.data.seq2seq_sft import pack_seq2seq_examples
from kobjectives.data.seq2seq_sft import seq2seq_sft_dataset
from kobjectives.data.seq2seq_sft import tokenize_seq2seq_pairs
from kobjectives.export import Seq2SeqTextGenerator
from kobjectives.export.seq2seq import export_seq2seq_saved_model
from kobjectives.metrics import denoising_baselines
from kobjectives.objectives import DenoisingSeq2Seq
from kobjectives.objectives.denoising_seq2seq import segment_attention_unsupported
from kobjectives.recipe import RecipeError
from kobjectives.recipe import Recipe
from kobjectives.recipe import Section
from kobjectives.recipe import TokenizerConfig
from kobjectives.recipe import TrainingConfig
from kobjectives.recipe import option
from kobjectives.recipe import section
from kobjectives.runs import register
from kobjectives.runs.denoising import SPECIAL_TOKENS
from kobjectives.runs.denoising import Seq2SeqModelConfig
from kobjectives.runs.denoising import _quiet
from kobjectives.runs.denoising import special_token_id
from kobjectives.runs.run import RECIPE_FILE
from kobjectives.runs.run import Run
from kobjectives.runs.sft import SFTDataConfig
from kobjectives.runs.sft import reading_skipped_rows

@dataclasses.dataclass(frozen=True)
class Seq2SeqSFTModelConfig(Seq2SeqModelConfig):
    """The encoder-decoder backbone (built from config or started from
    `init`, e.g. a `kobjectives train t5` run folder) and its two lengths."""

    target_length: int = option(
        64, "decoder ids per example: the target, its end token (BART: and start token) and "
        "padding; a longer target keeps its first tokens", within="[2, 16384]")


@dataclasses.dataclass(frozen=True)
class Seq2SeqSFTConfig(Section):
    """How training examples fill the rows: one per row, or packed exactly."""

    packing: bool = option(
        False, "pack several training examples per row (best-fit decreasing on both lengths; "
        "per-example attention masks, BART positions restarting), each computed as if alone; "
        "false: one example per row, padded")


@dataclasses.dataclass(frozen=True)
class Seq2SeqSFTRecipe(Recipe):
    """Seq2seq SFT of a T5/BART encoder-decoder: input text to target text, loss on the targets."""

    data: SFTDataConfig = section(SFTDataConfig)
    tokenizer: TokenizerConfig = section(TokenizerConfig, max_training_documents=2000)
    model: Seq2SeqSFTModelConfig = section(
        Seq2SeqSFTModelConfig, backbone="t5_tiny", sequence_length=64, target_length=64,
        reinitialize_t5_embedding=True)
    seq2seq: Seq2SeqSFTConfig = section(Seq2SeqSFTConfig)
    training: TrainingConfig = section(
        TrainingConfig, steps=600, epochs=3, batch_size=16, learning_rate=1e-3,
        warmup_steps=60)


@register
class Seq2SeqSFTRun(Run):
    """`kobjectives train seq2seq_sft`: a `DenoisingSeq2Seq` (T5 or BART)
    fine-tuned on (input, target) pairs (`kobjectives.data.seq2seq_sft`):
    the encoder reads the input (`input [end]`), the decoder is teacher-forced
    on the target (`target [end]`; BART: `[start] target [end]`, the start
    token given, not scored) and the loss is the mean cross-entropy over the
    target tokens. One example per row, or with `seq2seq.packing` several
    per training row, packed exactly (`pack_seq2seq_examples`: per-example
    attention masks, BART positions restarting; each example computes what
    it computes alone); evaluation and serving read one example per row.
    Held-out target perplexity and token accuracy next to a unigram model of
    the training targets. Serves raw input text (teacher-forced logits for
    given decoder ids, and greedy generation of the target,
    `export_seq2seq_saved_model`)."""

    name = "seq2seq_sft"
    recipe_class = Seq2SeqSFTRecipe
    title = "seq2seq SFT"
    backbone_kind = "seq2seq"
    search_space = {
        "training.learning_rate": ("float", 3e-4, 3e-3, "log"),
        "training.warmup_steps": ("int", 0, 300),
        "training.weight_decay": ("float", 1e-3, 0.1, "log"),
        "model.dropout": ("choice", [0.0, 0.1]),
    }
    train_examples = None
    validation_examples = None

    # -- checks --------------------------------------------------------------------

    def check(self):
        problems = list(super().check())
        model = self.recipe.model
        if not problems and self.is_bart() and model.target_length < 3:
            problems.append(
                f"model.target_length = {model.target_length}: a BART target holds a start "
                "token, at least one token and an end token; use at least 3")
        if not problems and model.init:
            problems += list(self._init_problems())
        if not problems and self.recipe.seq2seq.packing:
            cls = getattr(keras_hub.models, self.backbone_class_name(), None)
            reason = segment_attention_unsupported(cls) if isinstance(cls, type) else (
                f"the backbone class {self.backbone_class_name()!r} is not a keras-hub model; "
                "only T5Backbone and BartBackbone pack.")
            if reason:
                problems.append(f"seq2seq.packing = True: {reason} Set seq2seq.packing = false")
        yield from problems

    def _init_problems(self):
        model = self.recipe.model
        init = model.init
        config = backbones.preset_config(init)
        if config is None:
            return  # a preset name keras-hub resolves: checked when loaded
        longest = config.get("config", {}).get("max_sequence_length")
        if longest is not None and model.target_length > longest:
            yield (f"model.target_length = {model.target_length}: the backbone of model.init = "
                   f"{init!r} takes at most {longest} tokens (its max_sequence_length)")
        for problem in self.tokenizer_problems(backbones.load_tokenizer(init)):
            yield f"model.init = {init!r}: {problem}"
        # A t5 run folder: its embedding was trained at the logit scale its
        # recipe chose; the projection here must use the same one.
        earlier = pathlib.Path(init).expanduser() / RECIPE_FILE
        if config.get("class_name") == "T5Backbone" and earlier.is_file():
            trained = json.loads(earlier.read_text()).get("model", {}).get(
                "reinitialize_t5_embedding")
            if trained is not None and trained != model.reinitialize_t5_embedding:
                yield (f"model.reinitialize_t5_embedding = {model.reinitialize_t5_embedding}: "
                       f"the t5 run in model.init = {init!r} was trained with {trained} (its "
                       f"logits at scale {'1' if trained else 'hidden_dim ** -0.5'}); set it "
                       f"to {str(trained).lower()} so the projection matches")

    def special_roles(self):
        """The special tokens the run needs: padding and end (BART: start)."""
        return ("pad", "start", "end") if self.is_bart() else ("pad", "end")

    def tokenizer_problems(self, tokenizer):
        """What `tokenizer` lacks for this run (its special tokens); yields lines."""
        roles = self.special_roles()
        for role in roles:
            if special_token_id(tokenizer, role) is None:
                attribute, token = SPECIAL_TOKENS[role]
                yield (f"its tokenizer has no {role} token ({token}, or a `{attribute}`): "
                       f"the seq2seq_sft run needs {', '.join(roles)}")

    def backbone_class_name(self):
        """The keras-hub class of the backbone: `model.backbone`'s, the
        local preset's of `model.init`, else (a preset name) guessed from
        the tokenizer (`BartTokenizer`: BART; else T5)."""
        model = self.recipe.model
        if not model.init:
            return backbones.BACKBONES[model.backbone][0].__name__
        config = backbones.preset_config(model.init)
        if config is not None:
            return config.get("class_name", "")
        bart = isinstance(getattr(self, "tokenizer", None), keras_hub.models.BartTokenizer)
        return "BartBackbone" if bart else "T5Backbone"

    def is_bart(self):
        """True for a BART backbone (targets `[start] ... [end]`, decoding from `[end]`)."""
        return self.backbone_class_name() == "BartBackbone"

    # -- data and tokenizer ------------------------------------------------------

    def load_pairs(self):
        """The `{"input", "target"}` pairs of `data.files` or `data.dataset`
        (at most `data.max_documents`): the files' examples
        (`kobjectives.data.read_seq2seq_pairs`), the corpus task's questions
        and answers, or
        HH-RLHF chosen dialogues (`kobjectives.data.seq2seq_sft.dialogue_pair`:
        the dialogue before the last assistant turn, and that turn)."""
        data = self.recipe.data
        limit = data.max_documents or None
        if data.files:
            return data_lib.read_seq2seq_pairs(data.files, limit)
        if data.dataset == "hh_rlhf":
            conversations = reading_skipped_rows(
                self.log, "HH-RLHF dialogue(s)", data_lib.read_hh_rlhf,
                pathlib.Path(data.shared_dir).expanduser() / "hh_rlhf",
                subsets=data.hh_rlhf_subsets, target="chosen", max_dialogues=limit)
            return [dialogue_pair(conversation, f"hh_rlhf dialogue {index}")
                    for index, conversation in enumerate(conversations)]
        # Answers of at most ~4 characters per target token, whole sentences.
        pairs = data_lib.prompt_completion_task(
            max_examples=limit, max_characters=min(300, 4 * self.recipe.model.target_length))
        return [{"input": pair["prompt"], "target": pair["completion"]} for pair in pairs]

    def train_tokenizer(self, documents):
        """A WordPiece vocabulary trained on the training pairs' text (input
        and target), as a keras-hub `WordPieceTokenizer` (special tokens
        written in text are read as text)."""
        config = self.recipe.tokenizer
        texts = [pair["input"] + "\n" + pair["target"] for pair in documents]
        vocabulary = data_lib.train_wordpiece(
            texts, config.vocabulary_size, lowercase=config.lowercase,
            max_training_documents=config.max_training_documents or None)
        return keras_hub.tokenizers.WordPieceTokenizer(
            vocabulary=vocabulary, lowercase=config.lowercase, oov_token="[UNK]")

    def prepare(self):
        """The pairs split into train and validation (a stable hash of each),
        the tokenizer (the init's, else WordPiece trained on the training
        pairs) and the tokenized examples (truncations counted and logged)."""
        _quiet()
        out_dir = self._out_dir()
        out_dir.mkdir(parents=True, exist_ok=True)
        data = self.recipe.data
        pairs = self.load_pairs()
        self.train_documents, self.validation_documents = data_lib.split_examples(
            pairs, data.validation_fraction, seed=self.split_seed())
        self.log(f"data: {len(pairs)} pairs from {data.source_label} "
                 f"({len(self.train_documents)} train, {len(self.validation_documents)} validation)")
        if self.recipe.model.init:
            self.tokenizer = backbones.load_tokenizer(self.recipe.model.init)
            self.log(f"tokenizer: from {self.recipe.model.init} "
                     f"({self.tokenizer.vocabulary_size()} tokens)")
        else:
            self.tokenizer = self.train_tokenizer(self.train_documents)
            self.log(f"tokenizer: WordPiece, {self.tokenizer.vocabulary_size()} pieces")
        problems = list(self.tokenizer_problems(self.tokenizer))
        if problems:
            raise RecipeError(f"model.init = {self.recipe.model.init!r}: " + "; ".join(problems))
        data_lib.save_vocabulary(self.vocabulary, out_dir)
        self.train_examples = self.tokenized(self.train_documents, "train")
        self.validation_examples = self.tokenized(self.validation_documents, "validation")

    def token_id(self, role):
        """The tokenizer's id of a special `role` (`SPECIAL_TOKENS`)."""
        return special_token_id(self.tokenizer, role)

    def tokenized(self, pairs, split):
        """`Seq2SeqExamples` of `pairs` at the recipe's lengths (the layout of
        `kobjectives.data.seq2seq_sft.tokenize_seq2seq_pairs`)."""
        model = self.recipe.model
        examples = tokenize_seq2seq_pairs(
            [pair["input"] for pair in pairs], [pair["target"] for pair in pairs],
            self.tokenizer, model.sequence_length, model.target_length,
            end_token_id=self.token_id("end"), padding_token_id=self.token_id("pad"),
            target_start_token_id=self.token_id("start") if self.is_bart() else None)
        if examples.truncated_inputs or examples.truncated_targets:
            self.log(f"{split}: {examples.truncated_inputs} of {len(examples)} inputs longer "
                     f"than {examples.input_capacity} tokens keep their first tokens; "
                     f"{examples.truncated_targets} targets longer than "
                     f"{examples.target_capacity} tokens are cut to their first tokens")
        return examples

    def truncation_counts(self):
        """`{split: {"inputs": n, "targets": m}}`: the examples truncated."""
        return {split: {"inputs": examples.truncated_inputs,
                        "targets": examples.truncated_targets}
                for split, examples in (("train", self.train_examples),
                                        ("validation", self.validation_examples))}

    def document_counts(self):
        return {"train": len(self.train_examples), "validation": len(self.validation_examples)}

    def examples(self, split, input_context=None):
        """The tokenized examples of `split` (this input pipeline's shard)."""
        if split not in ("train", "validation"):
            raise ValueError(f"split must be 'train' or 'validation'. Received: {split!r}.")
        examples = self.train_examples if split == "train" else self.validation_examples
        if input_context is not None and input_context.num_input_pipelines > 1:
            examples = examples.shard(input_context.input_pipeline_id,
                                      input_context.num_input_pipelines)
        return examples

    def make_dataset(self, split, batch_size, input_context=None):
        """`(x, target_ids, target_weights)` batches: `"train"` shuffled
        (seeded), repeated, packed with `seq2seq.packing`; `"validation"`
        one example per row (as served), at most
        `training.validation_batches` batches, cached."""
        examples = self.examples(split, input_context)
        if split == "train":
            return seq2seq_sft_dataset(examples, batch_size, shuffle=True,
                                       seed=self.recipe.training.seed, repeat=True,
                                       packing=self.recipe.seq2seq.packing,
                                       padding_token_id=self.token_id("pad"))
        self.check_validation_size(len(examples), batch_size)
        dataset = seq2seq_sft_dataset(examples, batch_size, shuffle=False, cache=True).take(
            self.recipe.training.validation_batches)
        return self.finite_validation(dataset, len(examples), batch_size)

    def scoring_dataset(self, split, batch_size):
        """Every example of `split` once, in order (the last batch smaller)."""
        return seq2seq_sft_dataset(self.examples(split), batch_size, shuffle=False,
                                   drop_remainder=False)

    # -- model -------------------------------------------------------------------

    def build_objective(self):
        _quiet()
        model = self.recipe.model
        backbone = self.build_backbone(
            sequence_length=max(model.sequence_length, model.target_length))
        logit_scale = "auto"
        if model.reinitialize_t5_embedding:
            logit_scale = backbones.reinitialize_t5_embedding(backbone, redraw=not model.init)
        start = "end" if isinstance(backbone, keras_hub.models.BartBackbone) else "pad"
        return DenoisingSeq2Seq(
            backbone, decoder_start_token_id=self.token_id(start),
            padding_token_id=self.token_id("pad"), logit_scale=logit_scale)

    def objective_label(self, model):
        return "DenoisingSeq2Seq (seq2seq SFT)"

    # -- evaluation ----------------------------------------------------------------

    def excluded_ids(self):
        """The target ids that are not text: padding, start, end."""
        ids = (self.token_id(role) for role in ("pad", "start", "end"))
        return tuple(i for i in ids if i is not None)

    def evaluate(self, fitted):
        """Over every held-out target token (each validation example once,
        one per row, whether or not training packs):
        the model's perplexity and teacher-forced token accuracy (its own
        compiled metrics, `model.evaluate`) next to the unigram model of the
        training targets (`denoising_baselines.unigram_baseline`), and the
        accuracy on the text tokens alone (`content_token_accuracy`)."""
        batch_size = self.recipe.training.batch_size
        held_out = self.scoring_dataset("validation", batch_size)
        scores = fitted.model.evaluate(held_out, return_dict=True, verbose=0)
        excluded = self.excluded_ids()
        vocabulary = self.vocabulary
        train_batches = math.ceil(len(self.train_examples) / batch_size)
        baseline = denoising_baselines.unigram_baseline(
            self.scoring_dataset("train", batch_size), held_out, len(vocabulary), excluded,
            train_batches=train_batches)
        content, content_any = denoising_baselines.content_token_accuracy(
            fitted.model, held_out, excluded)
        model = self.recipe.model
        return {
            "backbone": model.init or model.backbone,
            "dataset": self.recipe.data.source,
            "encoder_length": model.sequence_length,
            "target_length": model.target_length,
            "packing": self.recipe.seq2seq.packing,
            **self.train_rows(),
            "val_loss": fitted.evaluation["loss"],
            "val_target_perplexity": scores["perplexity"],
            "val_target_token_accuracy": scores["token_accuracy"],
            "val_target_tokens": int(self.validation_examples.target_weights.sum()),
            "unigram_target_perplexity": baseline["perplexity"],
            "unigram_target_token_accuracy": baseline["token_accuracy"],
            "unigram_token": vocabulary[baseline["token"]],
            "val_content_token_accuracy": content,
            "val_content_token_accuracy_any_token": content_any,
            "unigram_content_token_accuracy": baseline["content_token_accuracy"],
            "unigram_content_token": vocabulary[baseline["content_token"]],
            "truncated": self.truncation_counts(),
            "example": self.example(fitted.model),
            "perplexity_unit": "per target token (the tokenizer's pieces), the end token "
                               "included" + (", BART's start token not" if self.is_bart() else ""),
        }

    def example(self, model):
        """The first held-out pair with the model's teacher-forced arg-max
        target, as text."""
        examples = self.validation_examples
        x = {key: value[:1] for key, value in examples.x().items()}
        predicted = keras.ops.convert_to_numpy(
            keras.ops.argmax(model(x, training=False), axis=-1))[0]
        weights = examples.target_weights[0] > 0
        special = set(self.excluded_ids())

        def text(ids):
            ids = [int(i) for i in ids if int(i) not in special]
            if not ids:
                return ""
            value = self.tokenizer.detokenize(np.asarray(ids, np.int32))
            if not isinstance(value, (str, bytes)):
                value = np.asarray(value).item()
            return value.decode() if isinstance(value, bytes) else value

        return {
            "input": self.validation_documents[0]["input"],
            "encoder_input": text(examples.encoder_token_ids[0]),
            "target": text(examples.target_ids[0][weights]),
            "predicted_target": text(predicted[weights]),
        }

    def summary(self, metrics):
        truncated = metrics["truncated"]["train"]
        return [
            f"held-out target perplexity {metrics['val_target_perplexity']:.2f} vs unigram "
            f"baseline {metrics['unigram_target_perplexity']:.2f}; token accuracy "
            f"{metrics['val_target_token_accuracy']:.4f} vs unigram baseline "
            f"{metrics['unigram_target_token_accuracy']:.4f} (always "
            f"{metrics['unigram_token']!r}; {metrics['val_target_tokens']} target tokens)",
            f"train pairs truncated: {truncated['inputs']} inputs (longer than "
            f"{metrics['encoder_length'] - 1} tokens), {truncated['targets']} targets; "
            f"train rows: {metrics.get('train_rows')}, target slots filled "
            f"{metrics.get('train_target_fill', float('nan')):.1%} (packing "
            f"{metrics['packing']})",
        ]

    def train_rows(self):
        """`{"train_rows", "train_target_fill"}`: the training rows (one per
        pair, or packed) and the share of their target slots holding a
        target id."""
        examples = self.train_examples
        if self.recipe.seq2seq.packing:
            rows = len(pack_seq2seq_examples(examples, self.token_id("pad"))[1])
        else:
            rows = len(examples)
        slots = rows * examples.target_ids.shape[1]
        return {"train_rows": rows,
                "train_target_fill": float(examples.target_padding_mask.sum() / slots)}

    # -- export --------------------------------------------------------------------

    def export(self, model, out_dir):
        """Writes `out_dir/saved_model/` (`export_seq2seq_saved_model`):
        `serving_default` takes `text` (the raw input, tokenized, cut to its
        first `model.sequence_length - 1` tokens and ended as in training)
        and `decoder_token_ids` (the decoder start id, then the target so
        far), and returns the teacher-forced `logits` (float32) and
        `encoder_sequence_output`; `generate` takes `text` (the raw input,
        read the same way) and returns the generated target `text` (greedy,
        ended at the end token, which is not part of it) and the decoder
        `token_ids` `[B, model.target_length]` (`text_generator`)."""
        _quiet()
        keras.mixed_precision.set_global_policy("float32")
        export_seq2seq_saved_model(
            model, pathlib.Path(out_dir) / "saved_model", tokenizer=self.tokenizer,
            encoder_sequence_length=self.recipe.model.sequence_length,
            eos_token_id=self.token_id("end"), overwrite=True,
            generator=self.text_generator(model))

    def text_generator(self, model):
        """Greedy generation of the target from raw input text (the
        SavedModel's `generate` signature): the encoder reads the input as
        in training, the decoder starts as in training (T5: the decoder
        start id; BART: `[end] [start]`, its start token forced) and stops
        at the end token, within `model.target_length` decoder ids."""
        prompt = (model.decoder_start_token_id,)
        if self.is_bart():
            prompt += (self.token_id("start"),)
        return Seq2SeqTextGenerator(
            model, self.tokenizer, encoder_sequence_length=self.recipe.model.sequence_length,
            target_length=self.recipe.model.target_length, eos_token_id=self.token_id("end"),
            decoder_prompt_ids=prompt, stop_token_ids=[self.token_id("end")])
