"""`keras.Model` subclasses, one objective each."""

from kobjectives.objectives.masked_language_model import MaskedLanguageModel
from kobjectives.objectives.contrastive_predictive_coding import CPCAccuracy  # noqa: F401
from kobjectives.objectives.contrastive_predictive_coding import ContrastivePredictiveCoding  # noqa: F401
from kobjectives.objectives.contrastive_encoder import ContrastiveEncoder  # noqa: F401
from kobjectives.objectives.grad_cache import CachedContrastiveEncoder  # noqa: F401
