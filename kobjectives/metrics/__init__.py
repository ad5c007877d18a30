"""`keras.metrics.Metric` subclasses."""

from kobjectives.metrics.masked_lm_metrics import MaskedAccuracy
from kobjectives.metrics.masked_lm_metrics import Perplexity
from kobjectives.metrics.sts import STSEvaluator  # noqa: F401
from kobjectives.metrics.sts import retrieval_recall  # noqa: F401
from kobjectives.metrics.sts import text_embedder  # noqa: F401
from kobjectives.metrics.sts import embedding_function  # noqa: F401
from kobjectives.metrics.sts import evaluate_embeddings  # noqa: F401
from kobjectives.metrics.sts import view_metrics  # noqa: F401
from kobjectives.metrics.causal_lm_metrics import TokenAccuracy  # noqa: F401
from kobjectives.metrics.causal_lm_metrics import TokenPerplexity  # noqa: F401
from kobjectives.metrics.causal_lm_metrics import causal_lm_statistics  # noqa: F401
from kobjectives.metrics.cpc_metrics import cpc_statistics  # noqa: F401
from kobjectives.metrics.replaced_token_metrics import RTDAccuracy  # noqa: F401
from kobjectives.metrics.replaced_token_metrics import ReplacedPrecision  # noqa: F401
from kobjectives.metrics.replaced_token_metrics import ReplacedRecall  # noqa: F401
from kobjectives.metrics.replaced_token_metrics import rtd_statistics  # noqa: F401
from kobjectives.metrics.sentence_pair_metrics import pair_label_baselines  # noqa: F401
from kobjectives.metrics import baselines  # noqa: F401
from kobjectives.metrics.classification_metrics import ClassificationReport  # noqa: F401
from kobjectives.metrics.classification_metrics import PearsonCorrelation  # noqa: F401
from kobjectives.metrics.span_f1 import SpanF1  # noqa: F401
