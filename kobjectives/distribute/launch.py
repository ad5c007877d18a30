"""`python -m kobjectives.distribute.launch train RECIPE ... --strategy NAME`:
the `kobjectives` command with the `tf.distribute` strategy created first.

`MultiWorkerMirroredStrategy` must be created before TensorFlow runs any op,
but a run prepares its data and tokenizer (TensorFlow ops) before it builds
the model. This entry point resolves `--strategy` (default `auto`: `TF_CONFIG`
=> multi-worker) at start-up, then runs the `kobjectives` command with the same
arguments; the run's `resolve_strategy` call returns the same strategy. Start
it on every worker with that worker's `TF_CONFIG` (see `docs/distributed.md`).

`KOBJECTIVES_LOGICAL_CPUS=N` splits the CPU into N logical devices first, so
`--strategy mirrored` runs N replicas on a CPU-only machine (for trying and
testing data-parallel runs without accelerators).
"""

import sys


def _strategy_name(argv):
    for i, arg in enumerate(argv):
        if arg == "--strategy" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--strategy="):
            return arg.split("=", 1)[1]
    return "auto"


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    from kobjectives import cli

    cli._import_tensorflow_quietly()
    import os

    import tensorflow as tf

    logical_cpus = int(os.environ.get("KOBJECTIVES_LOGICAL_CPUS", "0") or 0)
    if logical_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus
        )
    from kobjectives.distribute import resolve_strategy

    name = _strategy_name(argv)
    if name in ("multiworker", "tpu", "auto"):
        resolve_strategy(name)
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
