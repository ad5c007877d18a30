import pathlib

import pytest

from kobjectives.backbones import BACKBONES
from kobjectives.backbones import build_backbone
from kobjectives.backbones import check_backbone
from kobjectives.backbones import check_lora_layers
from kobjectives.backbones import enable_lora


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_named_backbone_builds_from_config(name):
    backbone = build_backbone(name, vocabulary_size=123, sequence_length=16)
    assert backbone.token_embedding.input_dim == 123


def test_unknown_backbone_lists_valid_ones():
    with pytest.raises(ValueError, match="Valid backbones: .*bert_tiny"):
        build_backbone("gpt9", 100, 16)


def test_objectives_reject_the_wrong_kind_of_backbone():
    check_backbone("bert_tiny", causal=False)
    check_backbone("gpt2_tiny", causal=True)
    with pytest.raises(ValueError, match="bidirectional .*Valid backbones: .*bert_tiny"):
        check_backbone("gpt2_tiny", causal=False)
    with pytest.raises(ValueError, match="causal .*Valid backbones: gemma_tiny, gpt2_small, gpt2_tiny, llama_tiny"):
        check_backbone("bert_tiny", causal=True)


@pytest.mark.parametrize("name", ["llama_tiny", "gemma_tiny", "t5_tiny", "bart_tiny", "xlnet_tiny"])
def test_every_family_builds_from_config_with_the_run_vocabulary(name):
    backbone = build_backbone(name, vocabulary_size=321, sequence_length=16, dropout=0.0)
    assert backbone.vocabulary_size == 321


def test_kinds_name_the_seq2seq_and_permutation_backbones():
    check_backbone("t5_tiny", kind="seq2seq")
    check_backbone("xlnet_tiny", kind="permutation")
    with pytest.raises(ValueError, match="encoder-decoder .*bart_tiny, t5_tiny"):
        check_backbone("bert_tiny", kind="seq2seq")


def test_enable_lora_trains_only_the_adapters_of_the_named_layers():
    import numpy as np

    backbone = build_backbone("gpt2_tiny", 50, 8, dropout=0.0)
    ids = np.array([[1, 2, 3, 4]], "int32")
    inputs = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    before = backbone(inputs)
    enable_lora(backbone, rank=3)
    names = sorted({w.path.split("/")[-2] for w in backbone.trainable_weights})
    assert names == ["query", "value"]  # keras-hub's default_lora_layer_names()
    # The adapters, and the adapted layers' biases (Keras' Dense.enable_lora).
    assert sorted({w.path.split("/")[-1] for w in backbone.trainable_weights}) == [
        "bias", "lora_kernel_a", "lora_kernel_b"]
    a = next(w for w in backbone.trainable_weights if w.path.endswith("lora_kernel_a"))
    assert a.shape[-1] == 3
    np.testing.assert_allclose(backbone(inputs), before, atol=1e-6)  # B starts at zero


@pytest.mark.parametrize("alpha", [None, 2, 12.0])
def test_lora_alpha_scales_the_adapters_in_the_call_and_in_the_saved_kernel(alpha):
    import numpy as np

    from kobjectives import compat

    backbone = enable_lora(build_backbone("gpt2_tiny", 50, 8, dropout=0.0), rank=4, alpha=alpha)
    query = next(layer for layer in compat.flatten_layers(backbone) if layer.name == "query")
    rng = np.random.default_rng(0)
    query.lora_kernel_b.assign(rng.normal(size=query.lora_kernel_b.shape))
    kernel = compat.lora_state(query)[0].numpy()  # the unmerged kernel
    # EinsumDense: kernel [hidden, heads, head_dim], A [hidden, heads, rank], B [rank, head_dim].
    delta = np.einsum("dhr,re->dhe", query.lora_kernel_a.numpy(), query.lora_kernel_b.numpy())
    scale = (4 if alpha is None else alpha) / 4
    x = rng.normal(size=(1, 3, kernel.shape[0])).astype("float32")
    expected = np.einsum("btd,dhe->bthe", x, kernel + scale * delta) + query.bias.numpy()
    np.testing.assert_allclose(query(x), expected, rtol=1e-4, atol=1e-4)
    store = {}
    query.save_own_variables(store)  # what model.keras and a preset hold: merged
    np.testing.assert_allclose(store["0"], kernel + scale * delta, rtol=1e-5, atol=1e-6)


def test_enable_lora_refuses_what_would_adapt_nothing():
    with pytest.raises(ValueError, match=r"LoRA rank must be an int >= 1. Received: rank=0"):
        enable_lora(build_backbone("gpt2_tiny", 50, 8), rank=0)
    for alpha in (0, -1.0, float("inf"), True, "8"):
        with pytest.raises(ValueError, match=r"LoRA alpha must be a finite number > 0 \(None: "
                                             r"the rank\). Received: alpha="):
            enable_lora(build_backbone("gpt2_tiny", 50, 8), rank=2, alpha=alpha)
    t5 = build_backbone("t5_tiny", 50, 8)
    with pytest.raises(ValueError, match=r"No layer of T5Backbone is named \['query', 'value'\].*"
                                         r"model.lora_layers.*'query_projector'"):
        enable_lora(t5, rank=2, layer_names=["query", "value"])
    enable_lora(t5, rank=2, layer_names=["query_projector", "value_projector"])
    assert {w.path.split("/")[-2] for w in t5.trainable_weights} == {
        "query_projector", "value_projector"}


def test_check_lora_layers_reads_the_init_before_its_weights(tmp_path):
    import keras_hub

    from kobjectives.backbones import save_preset

    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"], oov_token="[UNK]")
    save_preset(build_backbone("gpt2_tiny", 6, 8), tokenizer, tmp_path / "preset")
    check_lora_layers(str(tmp_path / "preset"))  # the defaults: query, value
    check_lora_layers(str(tmp_path / "preset"), ["query", "nope"])  # one is enough
    with pytest.raises(ValueError, match=r"No layer of GPT2Backbone is named \['q'\]: .*"
                                         r"adaptable layers are \[.*'query'"):
        check_lora_layers(str(tmp_path / "preset"), ["q"])
    check_lora_layers("gpt2_base_en", ["q"])  # a preset name: left to enable_lora


def _toy_copy_task(n, vocabulary, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    encoder = rng.integers(5, vocabulary, (n, 8)).astype("int32")
    target = encoder[:, :4].copy()
    x = {"encoder_token_ids": encoder, "encoder_padding_mask": np.ones_like(encoder),
         "target_ids": target, "target_padding_mask": np.ones_like(target)}
    return x, target


def test_reinitialized_t5_embedding_tells_tokens_apart_keeps_t5_logits_and_learns():
    """The bug behind `train t5` predicting no text token: keras-hub's
    T5Backbone draws its embedding from TruncatedNormal(1.0), i.e. mean 1
    and std 0.05, so all tokens start alike (and the trained model ignored
    its encoder). `reinitialize_t5_embedding` redraws it from
    N(0, 1/hidden_dim) with logit scale 1, which is T5's N(0, 1) with the
    hidden_dim ** -0.5 projection scale; a short AdamW run then learns a copy
    task that the keras-hub initialization has not learned in as many steps."""
    import keras
    import keras_hub
    import numpy as np

    from kobjectives.backbones import reinitialize_t5_embedding
    from kobjectives.objectives import DenoisingSeq2Seq

    hidden = 32

    def backbone(seed):
        keras.utils.set_random_seed(seed)
        return keras_hub.models.T5Backbone(
            vocabulary_size=40, num_layers=1, num_heads=2, hidden_dim=hidden,
            intermediate_dim=64, dropout=0.0)

    plain = DenoisingSeq2Seq(backbone(3))
    fixed_backbone = backbone(3)
    scale = reinitialize_t5_embedding(fixed_backbone)
    assert scale == 1.0
    fixed = DenoisingSeq2Seq(fixed_backbone, logit_scale=scale)

    def mean_abs_cosine(e):
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        cosine = e @ e.T
        return np.abs(cosine[~np.eye(len(e), dtype=bool)]).mean()

    original = plain.backbone.token_embedding.embeddings.numpy()
    redrawn = fixed_backbone.token_embedding.embeddings.numpy()
    assert mean_abs_cosine(original) > 0.9  # keras-hub: every token ~ the all-ones vector
    assert mean_abs_cosine(redrawn) < 0.25  # ~ sqrt(2 / (pi * hidden)) = 0.14 for random vectors
    assert abs(redrawn.mean()) < 0.02 and abs(redrawn.std() - hidden ** -0.5) < 0.02

    # A backbone trained after a redraw (loaded from its preset) keeps its
    # weights and gets the same logit scale.
    assert reinitialize_t5_embedding(fixed_backbone, redraw=False) == 1.0
    np.testing.assert_array_equal(fixed_backbone.token_embedding.embeddings.numpy(), redrawn)

    # The tied projection gives T5's logits (embedding * sqrt(hidden), scale
    # hidden ** -0.5) for the same decoder states.
    t5_like = DenoisingSeq2Seq(backbone(3))
    t5_like.backbone.token_embedding.embeddings.assign(redrawn * hidden ** 0.5)
    states = np.random.default_rng(1).normal(size=(2, 3, hidden)).astype("float32")
    np.testing.assert_allclose(t5_like.projection(states), fixed.projection(states),
                               rtol=1e-4, atol=1e-4)
    x, y = _toy_copy_task(512, 40, seed=0)

    losses = {}
    for name, model in (("plain", plain), ("fixed", fixed)):
        model.compile(optimizer=keras.optimizers.AdamW(2e-3, weight_decay=0.01, clipnorm=1.0),
                      jit_compile=False)
        history = model.fit(x, y, batch_size=32, epochs=6, verbose=0, shuffle=False)
        losses[name] = history.history["loss"][-1]
    # log(35) = 3.56 is the loss of a uniform guess over the 35 tokens.
    # Measured: keras-hub's initialization 3.59 (nothing learned), redrawn 2.37.
    assert losses["plain"] > 3.3 and losses["fixed"] < losses["plain"] - 0.8, losses
    # BART's embedding (std 0.02, unscaled logits) is left alone.
    bart = keras_hub.models.BartBackbone(
        vocabulary_size=40, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32,
        max_sequence_length=16)
    before = bart.token_embedding.embeddings.numpy()
    assert reinitialize_t5_embedding(bart) == "auto"
    np.testing.assert_array_equal(bart.token_embedding.embeddings.numpy(), before)


def test_a_preset_tokenizer_loads_whatever_the_backbone_class(tmp_path):
    import keras_hub

    from kobjectives.backbones import build_backbone
    from kobjectives.backbones import load_tokenizer
    from kobjectives.backbones import save_preset

    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]
    # keras-hub has no tokenizer class for XLNetBackbone: the xlnet run saves a BertTokenizer.
    save_preset(build_backbone("xlnet_tiny", len(vocabulary), 8),
                keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True),
                tmp_path / "preset")
    tokenizer = load_tokenizer(str(tmp_path))  # a run folder holding preset/
    assert isinstance(tokenizer, keras_hub.models.BertTokenizer)
    assert tokenizer.get_vocabulary() == vocabulary
    assert [list(map(int, row)) for row in tokenizer(["A b"])] == [[5, 6]]


def test_preset_location_names_a_missing_folder_and_an_unknown_preset_name(tmp_path, monkeypatch):
    import os

    from kobjectives.backbones import preset_config
    from kobjectives.backbones import preset_location

    monkeypatch.chdir(tmp_path)
    fix = ("give --init the folder of a finished `kobjectives train` run (its --out, with its "
           "parent folder, e.g. runs/NAME), a directory written by `save_to_preset`, or a "
           "keras-hub preset name.")
    # A path that does not exist: said so, not "holds no keras-hub preset".
    with pytest.raises(FileNotFoundError) as error:
        preset_location("runs/does-not-exist")
    assert str(error.value) == f"no folder runs/does-not-exist here (in {os.getcwd()}): {fix}"
    # A run folder's name without its parent: neither a folder here nor a preset name.
    with pytest.raises(FileNotFoundError) as error:
        preset_config("my_sft_run")
    assert str(error.value) == (
        f"no folder my_sft_run here (in {os.getcwd()}), and 'my_sft_run' is not a keras-hub "
        f"preset name (keras_hub.models.Backbone.presets lists them): {fix}")
    # ... and where a folder below holds that run, the message names it.
    (tmp_path / "runs" / "my_sft_run" / "preset").mkdir(parents=True)
    (tmp_path / "runs" / "my_sft_run" / "preset" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError,
                       match=r"e.g. runs/NAME\), .* runs/my_sft_run holds a preset here: "
                             r"--init runs/my_sft_run\.$"):
        preset_location("my_sft_run")
    assert preset_location("runs/my_sft_run") == str(pathlib.Path("runs/my_sft_run/preset"))
    # An existing folder without a preset keeps its own message.
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="^empty holds no keras-hub preset"):
        preset_location("empty")
    # Names keras-hub knows (presets, handles) are left to keras-hub (maybe the network).
    assert preset_location("bert_tiny_en_uncased") == "bert_tiny_en_uncased"
    assert preset_config("bert_tiny_en_uncased") is None
    assert preset_location("kaggle://keras/bert/keras/x") == "kaggle://keras/bert/keras/x"
