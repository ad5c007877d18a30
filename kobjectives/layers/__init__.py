"""kobjectives.layers."""
from kobjectives.layers.masked_lm_masker import MaskedLMMasker
from kobjectives.layers.pooling import SequencePooling  # noqa: F401
from kobjectives.layers.text_augmenter import TextAugmenter  # noqa: F401
