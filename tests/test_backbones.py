import pytest

from kobjectives.backbones import BACKBONES
from kobjectives.backbones import build_backbone
from kobjectives.backbones import check_backbone


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
