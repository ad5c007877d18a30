"""CPU time of one training step: permutation LM (XLNet) vs masked LM, with
and without XLA.

    python benchmarks/plm_step.py xlnet 1   # PermutationLanguageModel, jit_compile=True
    python benchmarks/plm_step.py xlnet 0   # jit_compile=False
    python benchmarks/plm_step.py mlm 1     # MaskedLanguageModel over bert_tiny

Batch 32, length 64, vocabulary 3,600 (about the default runs' sizes); prints
wall and process CPU seconds per step over 40 steps after a warm-up.
"""

import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kobjectives.backbones import build_backbone  # noqa: E402
from kobjectives.layers import MaskedLMMasker  # noqa: E402
from kobjectives.layers import PermutationLMMasker  # noqa: E402
from kobjectives.objectives import MaskedLanguageModel  # noqa: E402
from kobjectives.objectives import PermutationLanguageModel  # noqa: E402

V, L, B, STEPS = 3600, 64, 32, 40


def main(which="xlnet", jit="1"):
    ids = tf.constant(np.random.default_rng(0).integers(5, V, (B * 20, L)).astype("int32"))
    if which == "xlnet":
        m = PermutationLMMasker(num_predict=16, seed=1)(ids)
        keys = ("token_ids", "padding_mask", "perm_mask", "target_mapping")
        y, w = "target_ids", "target_weights"
        model = PermutationLanguageModel(build_backbone("xlnet_tiny", V, L))
    else:
        m = MaskedLMMasker(vocabulary_size=V, mask_selection_rate=0.15, mask_token_id=4,
                           mask_selection_length=12, seed=1)(ids)
        keys, y, w = ("token_ids", "padding_mask", "mask_positions"), "mask_ids", "mask_weights"
        model = MaskedLanguageModel(build_backbone("bert_tiny", V, L))
    x = {k: m[k] for k in keys}
    x["segment_ids"] = tf.zeros_like(ids)
    model.compile(jit_compile=jit == "1")
    ds = tf.data.Dataset.from_tensor_slices((x, m[y], m[w])).batch(B).repeat().prefetch(2)
    model.fit(ds, steps_per_epoch=5, epochs=1, verbose=0)
    wall, cpu = time.time(), time.process_time()
    model.fit(ds, steps_per_epoch=STEPS, epochs=1, verbose=0)
    print(f"{which} jit_compile={jit == '1'}: {(time.time() - wall) / STEPS:.3f} s wall, "
          f"{(time.process_time() - cpu) / STEPS:.3f} s CPU per step")


if __name__ == "__main__":
    main(*sys.argv[1:])
