"""`keras.losses.Loss` subclasses over `kobjectives.ops`."""

from kobjectives.losses.masked_lm_loss import MaskedLMLoss
