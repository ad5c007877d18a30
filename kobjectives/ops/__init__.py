"""Pure tensor math: the one source of truth for every formula."""

from kobjectives.ops.masked_lm import correct_predictions
from kobjectives.ops.masked_lm import masked_lm_loss
from kobjectives.ops.masked_lm import sparse_cross_entropy
from kobjectives.ops.reduction import cross_replica_sum
from kobjectives.ops.reduction import global_weighted_mean
