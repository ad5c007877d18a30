"""Small keras-hub backbones built from config by name (no weights download).

The CLI and the recipes name a backbone; `build_backbone` makes it, sized for
the run's vocabulary and sequence length. These are configurations of
keras-hub's own backbone classes, small enough to pretrain on two CPU cores.
"""

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
}
# Decoders: each position attends only to earlier ones.
CAUSAL_BACKBONES = ("gpt2_small", "gpt2_tiny")


def check_backbone(name, causal):
    """Raises unless `name` is a known backbone of the kind an objective needs.

    Args:
        name: a `BACKBONES` name.
        causal: True for objectives that need a decoder (CPC, causal LM),
            False for those that need a bidirectional encoder (masked LM).

    Raises:
        ValueError: naming the valid backbones of that kind.
    """
    valid = sorted(n for n in BACKBONES if (n in CAUSAL_BACKBONES) == causal)
    if name not in valid:
        kind = "a causal (decoder)" if causal else "a bidirectional (encoder)"
        raise ValueError(
            f"Backbone {name!r} cannot be used here: this objective needs "
            f"{kind} backbone. Valid backbones: {', '.join(valid)}."
        )


def build_backbone(name, vocabulary_size, sequence_length, dropout=0.1, dtype=None):
    """Builds the named small backbone from its config.

    Args:
        name: one of `BACKBONES`: encoders `bert_tiny`, `bert_small`,
            `roberta_tiny`, `albert_tiny`, `distilbert_tiny`, `electra_tiny`;
            decoders `gpt2_tiny`, `gpt2_small`.
        vocabulary_size: int, the tokenizer's vocabulary size.
        sequence_length: int, the longest sequence the model will see.
        dropout: float, the backbone's dropout rate.
        dtype: optional dtype policy name (e.g. `"mixed_bfloat16"`).

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
    config = dict(config, max_sequence_length=sequence_length, dropout=dropout)
    # ELECTRA's keras-hub backbone spells the vocabulary argument differently.
    vocab_key = "vocab_size" if cls is keras_hub.models.ElectraBackbone else "vocabulary_size"
    config[vocab_key] = vocabulary_size
    return cls(**config, dtype=dtype)
