"""Small keras-hub backbones built from config by name (no weights download).

The CLI and the recipes name a backbone; `build_backbone` makes it, sized for
the run's vocabulary and sequence length. These are configurations of
keras-hub's own backbone classes, small enough to pretrain on two CPU cores.
"""

import glob
import inspect
import json
import math
import os
import pathlib

import keras
import keras_hub

from kobjectives import compat

# name -> (keras-hub class, config). Vocabulary size and sequence length come
# from the run.
BACKBONES = {
    "bert_tiny": (
        keras_hub.models.BertBackbone,
        dict(num_layers=2, num_heads=2, hidden_dim=128, intermediate_dim=512),
    ),
    "bert_small": (
        keras_hub.models.BertBackbone,
        dict(num_layers=4, num_heads=4, hidden_dim=256, intermediate_dim=1024),
    ),
    "roberta_tiny": (
        keras_hub.models.RobertaBackbone,
        dict(num_layers=2, num_heads=2, hidden_dim=128, intermediate_dim=512),
    ),
    "albert_tiny": (
        keras_hub.models.AlbertBackbone,
        dict(num_layers=2, num_heads=2, embedding_dim=64, hidden_dim=128,
             intermediate_dim=512),
    ),
    "distilbert_tiny": (
        keras_hub.models.DistilBertBackbone,
        dict(num_layers=2, num_heads=2, hidden_dim=128, intermediate_dim=512),
    ),
    "electra_tiny": (
        keras_hub.models.ElectraBackbone,
        dict(num_layers=2, num_heads=2, embedding_dim=128, hidden_dim=128,
             intermediate_dim=512),
    ),
    "gpt2_tiny": (
        keras_hub.models.GPT2Backbone,
        dict(num_layers=2, num_heads=2, hidden_dim=128, intermediate_dim=512),
    ),
    "gpt2_small": (
        keras_hub.models.GPT2Backbone,
        dict(num_layers=4, num_heads=4, hidden_dim=256, intermediate_dim=1024),
    ),
    "llama_tiny": (
        keras_hub.models.LlamaBackbone,
        dict(num_layers=2, num_query_heads=4, num_key_value_heads=2, hidden_dim=128,
             intermediate_dim=384),
    ),
    "gemma_tiny": (
        keras_hub.models.GemmaBackbone,
        dict(num_layers=2, num_query_heads=4, num_key_value_heads=1, hidden_dim=128,
             intermediate_dim=512, head_dim=32),
    ),
    "t5_tiny": (
        keras_hub.models.T5Backbone,
        dict(num_layers=2, num_heads=2, hidden_dim=128, intermediate_dim=512,
             key_value_dim=64),
    ),
    "bart_tiny": (
        keras_hub.models.BartBackbone,
        dict(num_layers=2, num_heads=2, hidden_dim=128, intermediate_dim=512),
    ),
    "xlnet_tiny": (
        keras_hub.models.XLNetBackbone,
        dict(num_layers=2, num_heads=2, hidden_dim=128, intermediate_dim=512),
    ),
}
# Decoders: each position attends only to earlier ones.
CAUSAL_BACKBONES = ("gemma_tiny", "gpt2_small", "gpt2_tiny", "llama_tiny")
# Encoder-decoders (inputs `encoder_token_ids`, `decoder_token_ids`, ...).
SEQ2SEQ_BACKBONES = ("bart_tiny", "t5_tiny")
# Permutation-LM backbones (XLNet's two-stream attention).
PERMUTATION_BACKBONES = ("xlnet_tiny",)


_DEFAULT_BACKBONE_INPUTS = ("token_ids", "padding_mask")


def backbone_input_names(backbone):
    """The input keys a backbone takes: its functional inputs, or the default.

    keras-hub backbones are functional models whose `input` is a dict
    (`token_ids`, `padding_mask`, and `segment_ids` for BERT-style models). A
    subclassed `keras.Model` is assumed to take `token_ids` and
    `padding_mask`.
    """
    try:
        inputs = backbone.input
    except (AttributeError, ValueError):
        return _DEFAULT_BACKBONE_INPUTS
    if isinstance(inputs, dict):
        return tuple(inputs)
    return _DEFAULT_BACKBONE_INPUTS


def backbone_kind(name):
    """`"causal"`, `"seq2seq"`, `"permutation"` or `"encoder"` for a `BACKBONES` name."""
    for kind, names in (("causal", CAUSAL_BACKBONES), ("seq2seq", SEQ2SEQ_BACKBONES),
                        ("permutation", PERMUTATION_BACKBONES)):
        if name in names:
            return kind
    return "encoder"


_KIND_WORDS = {
    "causal": "a causal (decoder)",
    "encoder": "a bidirectional (encoder)",
    "seq2seq": "an encoder-decoder (seq2seq)",
    "permutation": "a permutation-LM (XLNet)",
}


def check_backbone(name, causal=None, kind=None):
    """Raises unless `name` is a known backbone of the kind an objective needs.

    Args:
        name: a `BACKBONES` name.
        causal: True for objectives that need a decoder (CPC, causal LM),
            False for those that need a bidirectional encoder (masked LM).
        kind: instead of `causal`: `"causal"`, `"encoder"`, `"seq2seq"` or
            `"permutation"`.

    Raises:
        ValueError: naming the valid backbones of that kind.
    """
    if kind is None:
        kind = "causal" if causal else "encoder"
    if kind not in _KIND_WORDS:
        raise ValueError(f"Unknown backbone kind {kind!r}. Valid: {', '.join(_KIND_WORDS)}.")
    valid = sorted(n for n in BACKBONES if backbone_kind(n) == kind)
    if name not in valid:
        kind = _KIND_WORDS[kind]
        raise ValueError(
            f"Backbone {name!r} cannot be used here: this objective needs "
            f"{kind} backbone. Valid backbones: {', '.join(valid)}."
        )


def build_backbone(name, vocabulary_size, sequence_length, dropout=0.1, dtype=None, **overrides):
    """Builds the named small backbone from its config.

    Args:
        name: one of `BACKBONES`: encoders `bert_tiny`, `bert_small`,
            `roberta_tiny`, `albert_tiny`, `distilbert_tiny`, `electra_tiny`;
            decoders `gpt2_tiny`, `gpt2_small`, `llama_tiny`, `gemma_tiny`;
            encoder-decoders `t5_tiny`, `bart_tiny`; permutation LM
            `xlnet_tiny`.
        vocabulary_size: int, the tokenizer's vocabulary size.
        sequence_length: int, the longest sequence the model will see.
        dropout: float, the backbone's dropout rate.
        dtype: optional dtype policy name (e.g. `"mixed_bfloat16"`).
        **overrides: config values replacing the named ones (e.g.
            `hidden_dim=64` for a smaller ELECTRA generator).

    Returns:
        A `keras_hub.models.Backbone`.

    Raises:
        ValueError: for an unknown name; the message lists the valid ones.
    """
    if name not in BACKBONES:
        raise ValueError(
            f"Unknown backbone {name!r}. Valid backbones: {', '.join(sorted(BACKBONES))}."
        )
    cls, config = BACKBONES[name]
    config = dict(config, dropout=dropout, **overrides)
    accepted = inspect.signature(cls.__init__).parameters
    # Backbones with learned positions take the length; rotary (Llama, Gemma)
    # and relative (T5, XLNet) ones need none.
    if "max_sequence_length" in accepted:
        config["max_sequence_length"] = sequence_length
    # ELECTRA's keras-hub backbone spells the vocabulary argument differently.
    config["vocab_size" if "vocab_size" in accepted else "vocabulary_size"] = vocabulary_size
    return cls(**config, dtype=dtype)


# keras-hub backbone classes by the kind of objective they serve (for a
# backbone loaded from a preset, whose name is not in `BACKBONES`).
_CLASS_KINDS = {
    "causal": ("GPT2Backbone", "LlamaBackbone", "GemmaBackbone", "Gemma3Backbone",
               "MistralBackbone", "Qwen3Backbone", "QwenBackbone", "OPTBackbone",
               "GPTNeoXBackbone", "FalconBackbone", "BloomBackbone", "PhiBackbone"),
    "seq2seq": ("T5Backbone", "BartBackbone"),
    "permutation": ("XLNetBackbone",),
}

PRESET_FOLDER = "preset"
"""The run folder's keras-hub preset: its trained backbone and tokenizer."""


def class_kind(class_name):
    """`"causal"`, `"seq2seq"`, `"permutation"` or `"encoder"` for a keras-hub
    backbone class name."""
    for kind, names in _CLASS_KINDS.items():
        if class_name in names:
            return kind
    return "encoder"


def preset_location(init):
    """Where `model.init` points: a preset directory (a run folder's
    `preset/`, or a directory written by `save_to_preset`) as a string, or
    a name keras-hub resolves (one of `keras_hub.models.Backbone.presets`,
    or a handle such as `kaggle://...` or `hf://...`; loading it may need
    the network).

    Raises:
        FileNotFoundError: `init` is a folder without a preset in it, a path
            that does not exist, or neither an existing folder nor a name
            keras-hub knows; the message names `init` and the fix.
    """
    path = pathlib.Path(init).expanduser()
    for candidate in (path / PRESET_FOLDER, path):
        if (candidate / "config.json").is_file():
            return str(candidate)
    if path.exists():
        if (path / "recipe.json").is_file():
            raise FileNotFoundError(
                f"{init} is a run folder without a {PRESET_FOLDER}/ (the run did not finish, "
                "or predates presets): start from a finished run's folder.")
        raise FileNotFoundError(
            f"{init} holds no keras-hub preset (no config.json): give a run folder written "
            "by `kobjectives train`, a directory written by `save_to_preset`, or a preset name.")
    if "://" in init or init in keras_hub.models.Backbone.presets:
        return init
    fix = ("give --init the folder of a finished `kobjectives train` run (its --out, with "
           "its parent folder, e.g. runs/NAME), a directory written by `save_to_preset`, or "
           "a keras-hub preset name")
    here = f"no folder {path} here (in {os.getcwd()})"
    if "/" in init or os.sep in init or init.startswith((".", "~")):
        raise FileNotFoundError(f"{here}: {fix}.")
    # A run folder's name typed without its parent (`my_run` for `runs/my_run`).
    nearby = sorted(str(p) for p in pathlib.Path().glob(f"*/{glob.escape(init)}")
                    if (p / PRESET_FOLDER / "config.json").is_file()
                    or (p / "config.json").is_file())
    hint = f" {nearby[0]} holds a preset here: --init {nearby[0]}." if nearby else ""
    raise FileNotFoundError(
        f"{here}, and {init!r} is not a keras-hub preset name "
        f"(keras_hub.models.Backbone.presets lists them): {fix}.{hint}")


def preset_config(init):
    """The backbone config (`config.json`) of the preset at `init`, or None
    for a preset name (read without downloading)."""
    location = preset_location(init)
    config = pathlib.Path(location) / "config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text())


def check_init(init, kind, sequence_length):
    """Raises (`ValueError`, naming `model.init`) unless the preset at `init`
    holds a backbone of `kind` that takes `sequence_length` tokens."""
    config = preset_config(init)
    if config is None:
        return
    class_name = config.get("class_name", "?")
    found = class_kind(class_name)
    if found != kind:
        raise ValueError(
            f"model.init = {init!r} holds a {class_name} ({_KIND_WORDS[found]} backbone), but "
            f"this objective needs {_KIND_WORDS[kind]} backbone.")
    longest = config.get("config", {}).get("max_sequence_length")
    if longest is not None and sequence_length > longest:
        raise ValueError(
            f"model.sequence_length = {sequence_length}: the backbone of model.init = {init!r} "
            f"takes at most {longest} tokens (its max_sequence_length).")


def load_backbone(init, dropout=None, dtype=None):
    """The backbone of the preset at `init` (see `preset_location`), with
    `dropout` where the class takes one."""
    location = preset_location(init)
    config = preset_config(init) or {}
    kwargs = {}
    if dropout is not None and "dropout" in config.get("config", {}):
        kwargs["dropout"] = dropout
    if dtype is not None:
        kwargs["dtype"] = dtype
    return keras_hub.models.Backbone.from_preset(location, **kwargs)


def grow_token_embedding(backbone, vocabulary_size):
    """A copy of `backbone` with `vocabulary_size` token embeddings: every
    weight copied, the new rows (appended ids) as the backbone's initializer
    draws them.

    Args:
        backbone: a keras-hub backbone with `vocabulary_size` in its config
            (e.g. `GPT2Backbone`, `LlamaBackbone`).
        vocabulary_size: int, the new size (the new ids are the last ones).

    Returns:
        A new backbone of the same class (`backbone` itself when the size
        is unchanged).

    Raises:
        ValueError: `vocabulary_size` smaller than the backbone's.

    Example:

    >>> backbone = keras_hub.models.GPT2Backbone(
    ...     vocabulary_size=10, num_layers=1, num_heads=2, hidden_dim=4,
    ...     intermediate_dim=8, max_sequence_length=6)
    >>> grown = grow_token_embedding(backbone, 14)
    >>> grown.vocabulary_size, tuple(grown.get_layer("token_embedding").embeddings.shape)
    (14, (14, 4))
    """
    old_size = backbone.vocabulary_size
    if vocabulary_size < old_size:
        raise ValueError(f"Cannot shrink the vocabulary from {old_size} to {vocabulary_size}.")
    if vocabulary_size == old_size:
        return backbone
    config = backbone.get_config()
    config["vocabulary_size"] = vocabulary_size
    grown = type(backbone).from_config(config)
    for new, old in zip(grown.weights, backbone.weights):
        value = old.numpy()
        if tuple(new.shape) != value.shape:
            target = new.numpy()
            target[tuple(slice(0, n) for n in value.shape)] = value
            value = target
        new.assign(value)
    return grown


def enable_lora(backbone, rank, layer_names=None, alpha=None):
    """Trains low-rank adapters instead of the backbone: keras-hub's
    `Backbone.enable_lora`, refusing a call that would adapt nothing.

    Every weight of the backbone is frozen, and each layer named in
    `layer_names` gains two trainable factors `A` (`[in, rank]`, He-uniform)
    and `B` (`[rank, out]`, zeros): the layer's kernel becomes `kernel +
    (alpha / rank) A @ B` (the Keras layers' `lora_alpha`, which keras-hub's
    `enable_lora` leaves at the rank), so the adapted backbone starts as the
    same function. An attention projection's kernel `[hidden, heads,
    head_dim]` gains `A` `[hidden, heads, rank]` and `B` `[rank, head_dim]`
    (Keras' `EinsumDense.enable_lora`): rank `rank` per head. The adapted
    layers' biases stay trainable, as Keras' `Dense.enable_lora` leaves them
    (PEFT's `bias="lora_only"`). Saving merges the adapters into the kernels
    (Keras' `save_own_variables`): a preset written afterwards is a plain
    backbone, and `kobjectives.distribute.RunBackup` backs the unmerged
    kernels and the adapters up beside its checkpoint to resume exactly.

    Reference: Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language
    Models", https://arxiv.org/abs/2106.09685.

    Args:
        backbone: a built `keras_hub.models.Backbone`.
        rank: int >= 1, the adapters' rank.
        layer_names: list of layer names to adapt (PEFT's `target_modules`);
            None: `backbone.default_lora_layer_names()` (the attention
            query and value projections: `query_dense` / `value_dense`,
            `query` / `value`).
        alpha: number > 0, PEFT's `lora_alpha`: the adapters' product is
            scaled by `alpha / rank`. None: the rank (scale 1).

    Returns:
        The backbone (adapted in place).

    Raises:
        ValueError: `rank` below 1, `alpha` not above 0, or no layer of the
            backbone has one of the names (keras-hub's `T5Backbone` names its
            projections `query_projector` / `value_projector`); the message
            lists the names that can be adapted.

    Example:

    >>> backbone = build_backbone("gpt2_tiny", 100, 8, dropout=0.0)
    >>> backbone = enable_lora(backbone, rank=2)
    >>> sorted({w.path.split("/")[-1] for w in backbone.trainable_weights})
    ['bias', 'lora_kernel_a', 'lora_kernel_b']
    """
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"LoRA rank must be an int >= 1. Received: rank={rank!r}.")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))
                              or not alpha > 0 or math.isinf(alpha)):
        raise ValueError(f"LoRA alpha must be a finite number > 0 (None: the rank). "
                         f"Received: alpha={alpha!r}.")
    names = _check_lora_layers(backbone, layer_names)
    backbone.enable_lora(rank, target_layer_names=names)
    if alpha is not None:
        for layer in compat.flatten_layers(backbone):
            if getattr(layer, "lora_enabled", False):
                layer.lora_alpha = alpha  # read at call time: scale alpha / rank
    return backbone


def _check_lora_layers(backbone, layer_names):
    """The layer names LoRA adapts in `backbone` (`layer_names`, or its
    defaults); raises when none of them is an adaptable layer of it."""
    names = list(layer_names or backbone.default_lora_layer_names())
    adaptable = sorted({layer.name for layer in compat.flatten_layers(backbone)
                        if layer is not backbone and hasattr(layer, "enable_lora")
                        and layer.weights})
    if not set(names) & set(adaptable):
        raise ValueError(
            f"No layer of {type(backbone).__name__} is named {names}: LoRA would adapt "
            f"nothing. Name the layers to adapt (the recipe's model.lora_layers); this "
            f"backbone's adaptable layers are {adaptable}.")
    return names


def check_lora_layers(init, layer_names=None):
    """Raises (as `enable_lora`) unless LoRA on `layer_names` (None: the
    defaults) adapts a layer of the backbone at `init`, before its weights
    are loaded: the check runs on a probe of the preset's class with one
    layer and a small vocabulary (the layer names do not depend on them).
    A preset whose probe cannot be built (a preset name, an unusual config)
    is left to `enable_lora`.

    Args:
        init: a run folder or preset directory (see `preset_location`).
        layer_names: list of layer names, or None.
    """
    config = preset_config(init)
    if config is None:
        return
    for key, small in (("num_layers", 1), ("vocabulary_size", 64)):
        if key in config.get("config", {}):
            config["config"][key] = small
    try:
        probe = keras.saving.deserialize_keras_object(config)
    except (TypeError, ValueError, KeyError):  # a probe that cannot be built checks nothing
        return
    _check_lora_layers(probe, layer_names)


def load_tokenizer(init):
    """The tokenizer of the preset at `init`.

    A local preset's `tokenizer.json` is read as written, whatever the
    backbone: `Tokenizer.from_preset` insists on a keras-hub tokenizer class
    made for the preset's backbone class, and there is none for
    `XLNetBackbone` (whose runs save a `BertTokenizer`)."""
    location = preset_location(init)
    config = pathlib.Path(location) / "tokenizer.json"
    if not config.is_file():
        return keras_hub.tokenizers.Tokenizer.from_preset(location)
    tokenizer = keras.saving.deserialize_keras_object(json.loads(config.read_text()))
    tokenizer.load_preset_assets(location)
    return tokenizer


def save_preset(backbone, tokenizer, directory):
    """Writes `backbone` and `tokenizer` as one keras-hub preset (replacing
    an older one in `directory`), loadable by `Backbone.from_preset` and
    `Tokenizer.from_preset`."""
    import shutil

    directory = pathlib.Path(directory)
    shutil.rmtree(directory, ignore_errors=True)
    backbone.save_to_preset(str(directory))
    tokenizer.save_to_preset(str(directory))
    return directory


def reinitialize_t5_embedding(backbone, redraw=True):
    """Re-draws a keras-hub `T5Backbone`'s tied token embedding as T5 means
    it, in a form Adam can train; returns the `logit_scale` to give
    `kobjectives.objectives.DenoisingSeq2Seq` (1.0; `"auto"` for other
    backbones, left as they are).

    The bug it fixes: keras-hub's `T5Backbone` builds its embedding with
    `keras.initializers.TruncatedNormal(1.0)`, whose first argument is the
    *mean*, so every token starts as the all-ones vector plus noise of
    standard deviation 0.05: all tokens look alike to the encoder, and the
    tied projection gives all of them nearly the same logit. T5 draws the
    embedding from N(0, 1) and scales the decoder states by
    `hidden_dim ** -0.5` before the tied projection. Here the embedding is
    drawn from N(0, 1 / hidden_dim) and projected with scale 1 (the same
    logits as T5's for the same decoder states; the encoder and decoder read
    embeddings `sqrt(hidden_dim)` times smaller), an embedding of the scale
    of the other weights: Adam's steps are absolute (about the learning
    rate), not relative as Adafactor's (T5's optimizer), so it moves it at
    their pace. The draw uses Keras' global random state
    (`keras.utils.set_random_seed`).

    Args:
        backbone: a keras-hub backbone; only a `T5Backbone` with tied
            embeddings is changed.
        redraw: False leaves the weights (a backbone trained after a
            redraw, e.g. loaded from that run's preset) and only returns
            the logit scale it was trained with.

    Returns:
        `1.0` for a tied `T5Backbone`, else `"auto"`.

    Reference:
        Raffel et al., 2020, https://arxiv.org/abs/1910.10683 (T5's
        embedding initialization and scaled tied projection).

    Example:

    >>> import keras_hub
    >>> backbone = keras_hub.models.T5Backbone(
    ...     vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32)
    >>> reinitialize_t5_embedding(backbone)
    1.0
    >>> abs(float(backbone.token_embedding.embeddings.numpy().mean())) < 0.1
    True
    """
    import keras

    if not isinstance(backbone, keras_hub.models.T5Backbone) or not backbone.tie_embedding_weights:
        return "auto"
    if redraw:
        embeddings = backbone.token_embedding.embeddings
        draw = keras.initializers.RandomNormal(mean=0.0, stddev=backbone.hidden_dim ** -0.5)
        embeddings.assign(keras.ops.cast(draw(embeddings.shape, dtype="float32"), embeddings.dtype))
    return 1.0
