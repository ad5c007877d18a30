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
    with pytest.raises(ValueError, match="causal .*Valid backbones: gpt2_small, gpt2_tiny"):
        check_backbone("bert_tiny", causal=True)
