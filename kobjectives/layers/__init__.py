"""kobjectives.layers."""
from kobjectives.layers.masked_lm_masker import MaskedLMMasker
from kobjectives.layers.pooling import SequencePooling  # noqa: F401
from kobjectives.layers.text_augmenter import TextAugmenter  # noqa: F401
from kobjectives.layers.span_corruption import SpanCorruption  # noqa: F401
from kobjectives.layers.sequence_packer import SequencePacker  # noqa: F401
from kobjectives.layers.sentence_pair_generator import SentencePairGenerator  # noqa: F401
from kobjectives.layers.permutation_lm_masker import PermutationLMMasker  # noqa: F401
from kobjectives.layers.bart_noising import BartNoising  # noqa: F401
from kobjectives.layers.token_weighted_pooling import TokenWeightedPooling  # noqa: F401
from kobjectives.layers.word_label_aligner import WordLabelAligner  # noqa: F401
from kobjectives.layers.word_label_aligner import token_classification_inputs  # noqa: F401
from kobjectives.layers.word_label_aligner import word_tags_from_token_tags  # noqa: F401
