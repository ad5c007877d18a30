"""`keras.metrics.Metric` subclasses."""

from kobjectives.metrics.masked_lm_metrics import MaskedAccuracy
from kobjectives.metrics.masked_lm_metrics import Perplexity
