"""kobjectives.layers."""
from kobjectives.layers.masked_lm_masker import MaskedLMMasker
