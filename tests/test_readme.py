"""The README's Python example runs as written and does what it says."""

import math
import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_trains():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README.md has no python example"
    namespace = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    model, dataset = namespace["model"], namespace["dataset"]
    vocabulary_size = len(namespace["vocabulary"])
    # The masker's static shapes: 32 rows of 64 tokens, 16 prediction slots.
    x, y, weights = next(iter(dataset))
    assert x["token_ids"].shape == (32, 64) and x["mask_positions"].shape == (32, 16)
    assert y.shape == weights.shape == (32, 16)
    # Masked slots hold [MASK] (80%), a random or the original token; the
    # labels are the original tokens, never padding.
    picked = np.take_along_axis(x["token_ids"].numpy(), x["mask_positions"].numpy(), 1)
    real = weights.numpy() > 0
    assert 0.6 < (picked[real] == namespace["tokenizer"].mask_token_id).mean() < 0.95
    assert (y.numpy()[real] != 0).all()
    # 20 steps learn: the epoch's mean loss is below a uniform guess over the
    # vocabulary (ln V, 7.44), the trained model's clearly so (about 7.0); on one batch
    # the perplexity is the exp of the loss (over several, Keras averages
    # the batch losses while the perplexity pools the slots).
    history = model.history.history
    assert history["loss"][0] < math.log(vocabulary_size), history
    assert 0.0 < history["masked_accuracy"][0] < 1.0
    result = model.evaluate(dataset.take(1), return_dict=True, verbose=0)
    assert result["loss"] < math.log(vocabulary_size) - 0.2, (result, history)
    assert math.isclose(result["perplexity"], math.exp(result["loss"]), rel_tol=1e-4)


def test_readme_test_command_is_what_ci_runs():
    ci = (README.parent / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in README.read_text()
