"""Small keras-hub backbones built from config by name (no weights download).

The CLI and the recipes name a backbone; `build_backbone` makes it, sized for
the run's vocabulary and sequence length. These are configurations of
keras-hub's own backbone classes, small enough to pretrain on two CPU cores.
"""

import inspect

import keras_hub

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
