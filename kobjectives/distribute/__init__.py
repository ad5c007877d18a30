"""Strategy resolution and cross-replica helpers."""

from kobjectives.distribute.strategy import STRATEGIES
from kobjectives.distribute.strategy import resolve_strategy
