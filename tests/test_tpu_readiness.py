"""TPU readiness of every registered objective (`kobjectives.runs.available_runs()`).

For each run, on a tiny recipe: its data pipeline's element spec is fully
defined with a static batch dimension; its training step lowers to XLA HLO
under `jit_compile=True` (static shapes, no host calls: a step with a
`py_function` or a dynamic shape cannot be lowered); (slow) with
`tf.config.experimental.enable_op_determinism()` two seeded runs give
identical losses; (slow) a step under the `mixed_bfloat16` policy computes
in bfloat16 (`compute_dtype`) and returns a float32 loss.
"""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from kobjectives.runs import available_runs
from tests.distribute import runner_probe

OBJECTIVES = available_runs()
# The default (fast) suite lowers one representative step to XLA; every
# run's step is lowered under `-m slow`.
FAST_XLA = {"mlm"}
XLA_PARAMS = [
    objective if objective in FAST_XLA else pytest.param(objective, marks=pytest.mark.slow)
    for objective in OBJECTIVES
]
HOST_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc", "Print", "PrintV2"}
_PREPARED = {}


def _run(objective, tmp_path_factory):
    if objective not in _PREPARED:
        _PREPARED[objective] = runner_probe.tiny_run(
            objective, tmp_path_factory.mktemp(f"ready_{objective}"))
    return _PREPARED[objective]


# The default suite checks the static shapes of a run of each data kind
# (packed text, masked text, labelled text, chat); every run under `-m slow`
# (preparing each costs 5 to 20 s).
FAST_SPEC = {"mlm", "clm", "classify", "tag", "sft"}
SPEC_PARAMS = [
    objective if objective in FAST_SPEC else pytest.param(objective, marks=pytest.mark.slow)
    for objective in OBJECTIVES
]


@pytest.mark.parametrize("objective", SPEC_PARAMS)
def test_element_spec_is_fully_defined(objective, tmp_path_factory):
    run = _run(objective, tmp_path_factory)
    batch_size = run.recipe.training.batch_size
    for split in ("train", "validation"):
        dataset = run.make_dataset(split, batch_size)
        for spec in tf.nest.flatten(dataset.element_spec):
            assert spec.shape.is_fully_defined(), (split, dataset.element_spec)
            assert spec.shape.rank == 0 or spec.shape[0] == batch_size, (split, spec)


@pytest.mark.parametrize("objective", XLA_PARAMS)
def test_training_step_lowers_to_xla_with_static_shapes_and_no_host_calls(
    objective, tmp_path_factory
):
    run = _run(objective, tmp_path_factory)
    batch_size = run.recipe.training.batch_size
    keras.utils.set_random_seed(0)
    dataset = run.make_dataset("train", batch_size)
    model = run.build_model()
    model.build_from_dataset(dataset)
    batch = next(iter(dataset))
    step = tf.function(model.train_step, jit_compile=True)
    graph = step.get_concrete_function(batch).graph
    assert not {op.type for op in graph.get_operations()} & HOST_OPS
    for tensor in graph.inputs:
        if tensor.dtype != tf.resource:
            assert tensor.shape.is_fully_defined(), tensor
    hlo = step.experimental_get_compiler_ir(batch)(stage="hlo")
    assert "ENTRY" in hlo


@pytest.mark.slow
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_two_seeded_runs_are_identical_under_op_determinism(objective, tmp_path):
    script = runner_probe.__file__
    result = subprocess.run(
        [sys.executable, script, objective, str(tmp_path)], capture_output=True, text=True,
        timeout=900, env={**__import__("os").environ, "CUDA_VISIBLE_DEVICES": "",
                          "TF_CPP_MIN_LOG_LEVEL": "2"},
        cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("PROBE "))
    first, second = json.loads(line[len("PROBE "):])["losses"]
    assert len(first) == 3 and all(np.isfinite(first))
    assert first == second  # bit-identical


@pytest.mark.slow
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_mixed_bfloat16_step_has_a_float32_loss(objective, tmp_path_factory):
    run = _run(objective, tmp_path_factory)
    batch_size = run.recipe.training.batch_size
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    keras.utils.set_random_seed(0)
    dataset = run.make_dataset("train", batch_size)
    model = run.build_model()
    assert model.compute_dtype == "bfloat16"
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(next(iter(dataset)))
    y_pred = model(x, training=False)  # outputs may be cast to float32 for the loss
    if type(model).train_step is keras.Model.train_step or hasattr(model, "compute_loss"):
        loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                  training=False)
        assert loss.dtype == tf.float32, loss.dtype
        assert np.isfinite(float(loss))
    history = model.fit(dataset, epochs=1, steps_per_epoch=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
