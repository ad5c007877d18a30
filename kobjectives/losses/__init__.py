"""`keras.losses.Loss` subclasses over `kobjectives.ops`."""

from kobjectives.losses.masked_lm_loss import MaskedLMLoss
from kobjectives.losses.contrastive_losses import CoSENTLoss  # noqa: F401
from kobjectives.losses.contrastive_losses import ContrastiveMarginLoss  # noqa: F401
from kobjectives.losses.contrastive_losses import InfoNCELoss  # noqa: F401
from kobjectives.losses.contrastive_losses import TripletMarginLoss  # noqa: F401
