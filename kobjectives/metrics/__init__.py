"""`keras.metrics.Metric` subclasses."""

from kobjectives.metrics.masked_lm_metrics import MaskedAccuracy
from kobjectives.metrics.masked_lm_metrics import Perplexity
from kobjectives.metrics.sts import STSEvaluator  # noqa: F401
from kobjectives.metrics.sts import retrieval_recall  # noqa: F401
from kobjectives.metrics.sts import text_embedder  # noqa: F401
