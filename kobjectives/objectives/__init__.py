"""`keras.Model` subclasses, one objective each."""

from kobjectives.objectives.masked_language_model import MaskedLanguageModel
from kobjectives.objectives.contrastive_predictive_coding import CPCAccuracy  # noqa: F401
from kobjectives.objectives.contrastive_predictive_coding import ContrastivePredictiveCoding  # noqa: F401
from kobjectives.objectives.contrastive_encoder import ContrastiveEncoder  # noqa: F401
from kobjectives.objectives.grad_cache import CachedContrastiveEncoder  # noqa: F401
from kobjectives.objectives.causal_language_model import CausalLanguageModel  # noqa: F401
from kobjectives.objectives.electra_pretrainer import ElectraPretrainer  # noqa: F401
from kobjectives.objectives.electra_pretrainer import ReplacedTokenDetectionHead  # noqa: F401
from kobjectives.objectives.permutation_language_model import PermutationLanguageModel  # noqa: F401
from kobjectives.objectives.sentence_pair_pretrainer import SentencePairPretrainer  # noqa: F401
from kobjectives.objectives.denoising_seq2seq import DenoisingSeq2Seq  # noqa: F401
from kobjectives.objectives.frozen import FrozenModel  # noqa: F401
from kobjectives.objectives.frozen import precompute_frozen_outputs  # noqa: F401
from kobjectives.objectives.objective import Objective  # noqa: F401
from kobjectives.objectives.sequence_classifier import SequenceClassifier  # noqa: F401
from kobjectives.objectives.token_classifier import TokenClassifier  # noqa: F401
from kobjectives.objectives.reward_model import RewardModel  # noqa: F401
from kobjectives.objectives.preference_optimization import DirectPreferenceOptimization  # noqa: F401
from kobjectives.objectives.preference_optimization import precompute_reference_log_probs  # noqa: F401
from kobjectives.objectives.preference_optimization import KahnemanTverskyOptimization  # noqa: F401
from kobjectives.objectives.preference_optimization import ReferenceFreePreferenceOptimization  # noqa: F401
from kobjectives.objectives.reference_sync import SyncReferenceModel  # noqa: F401
