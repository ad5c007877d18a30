"""Strategy resolution and cross-replica helpers."""

from kobjectives.distribute.strategy import STRATEGIES
from kobjectives.distribute.strategy import resolve_strategy
from kobjectives.distribute.datasets import distribute_datasets
from kobjectives.distribute.datasets import input_options
from kobjectives.distribute.datasets import is_distributed
from kobjectives.distribute.datasets import per_replica_batch_size
from kobjectives.distribute.fault_tolerance import CorruptedBackupError  # noqa: F401
from kobjectives.distribute.fault_tolerance import NonFiniteLossError
from kobjectives.distribute.fault_tolerance import RunBackup
from kobjectives.distribute.fault_tolerance import StopOnNonFiniteLoss
from kobjectives.distribute.fault_tolerance import is_chief
from kobjectives.distribute.fault_tolerance import read_run_log
from kobjectives.distribute.fault_tolerance import worker_dir
