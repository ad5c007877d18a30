"""Pure tensor math: the one source of truth for every formula."""

from kobjectives.ops.masked_lm import correct_predictions
from kobjectives.ops.masked_lm import masked_lm_loss
from kobjectives.ops.masked_lm import sparse_cross_entropy
from kobjectives.ops.reduction import cross_replica_sum
from kobjectives.ops.reduction import global_weighted_mean
from kobjectives.ops.contrastive import contrastive_margin_loss  # noqa: F401
from kobjectives.ops.contrastive import cosent_loss  # noqa: F401
from kobjectives.ops.contrastive import cross_replica_concat  # noqa: F401
from kobjectives.ops.contrastive import info_nce  # noqa: F401
from kobjectives.ops.contrastive import l2_normalize  # noqa: F401
from kobjectives.ops.contrastive import pair_distance  # noqa: F401
from kobjectives.ops.contrastive import triplet_margin_loss  # noqa: F401
