"""Gradient caching (GradCache) for large-batch contrastive training.

In-batch contrastive losses get better with the batch (more negatives), but
backpropagating through an encoder keeps every activation of the batch alive,
so memory grows linearly with it. Gao et al. (2021) observe that the loss
couples the examples *only through their embeddings*: with `e = f_W(x)`,

    dL/dW = sum_j (dL/de_j) (de_j/dW),

and `dL/de` is cheap (a `[B, dim]` tensor). The gradient can therefore be
computed in three passes whose peak memory is that of *one mini-batch*:

1. embed the batch in mini-batches of `m` rows **without a tape** (no
   activations kept), collecting the embeddings `E` (`[B, dim]`);
2. compute the full-batch loss `L(E)` and `G = dL/dE` (the contrastive
   interactions, cross-replica negatives included, happen here);
3. re-embed each mini-batch under a tape and backpropagate the surrogate
   `sum(e_chunk * stop_gradient(G_chunk))`, whose gradient with respect to the
   parameters is exactly that mini-batch's share of `dL/dW`; accumulate.

The price is a second forward pass (about +1/3 compute for an encoder). The
result equals the ordinary step's gradient up to float round-off, provided
pass 3 sees the same randomness as pass 1: dropout masks are made identical
by snapshotting the Keras `SeedGenerator` states of the embedder before pass 1
and restoring them before pass 3 (both passes then draw the same sequence of
seeds, chunk by chunk, view by view). The step is then identical to an
uncached step that embeds the batch chunk by chunk in the same order
(`contrastive_gradients(..., mini_batch_size=m)`); a full-batch forward draws
one mask for the whole batch instead, which is a different (equally valid)
sample of the dropout noise.

Both loops are `tf.while_loop`s (`parallel_iterations=1`, so chunks run one
at a time and draw seeds in order) over chunks of the views reshaped to
`[B / m, m, ...]`: the step traces and XLA-compiles one copy of the embedder
forward (pass 1) and one forward + backward (pass 3) whatever `B / m` is.
`unroll=True` instead unrolls a Python loop (for comparison; its trace and
compile time grow with `B / m`).

Reference:
    Gao, Zhang, Han and Callan, 2021, "Scaling Deep Contrastive Learning
    Batch Size under Memory Limited Setup", RepL4NLP,
    https://arxiv.org/abs/2101.06983.
"""

import numbers

import keras
import tensorflow as tf

from kobjectives import compat
from kobjectives.ops.contrastive import info_nce
from kobjectives.objectives.objective import Objective

_VIEW_KEYS = ("anchor", "positive", "negative")


# --------------------------------------------------------------------------
# Validation and chunking.
# --------------------------------------------------------------------------


def _check_mini_batch_size(mini_batch_size, allow_none=False):
    if mini_batch_size is None and allow_none:
        return None
    if (
        isinstance(mini_batch_size, bool)
        or not isinstance(mini_batch_size, numbers.Integral)
        or mini_batch_size < 1
    ):
        raise ValueError(
            "`mini_batch_size` must be a positive int, the number of rows "
            "embedded at once (e.g. 64)"
            + (", or None for the uncached step" if allow_none else "")
            + f". Received: mini_batch_size={mini_batch_size!r}"
        )
    return int(mini_batch_size)


def _batch_size(views, mini_batch_size):
    """Checks the views; returns `(B, n)`: static ints or scalar tensors."""
    if not isinstance(views, (list, tuple)) or not views:
        raise ValueError(
            "`views` must be a non-empty list of input structures (one per "
            f"view: anchors, positives, ...). Received: {type(views).__name__}"
        )
    leaves = []
    for v, view in enumerate(views):
        flat = [tf.convert_to_tensor(t) for t in tf.nest.flatten(view)]
        if not flat:
            raise ValueError(f"`views[{v}]` holds no tensors.")
        for t in flat:
            if t.shape.rank == 0:
                raise ValueError(
                    f"Every tensor of `views[{v}]` needs a leading batch axis. "
                    f"Received a scalar."
                )
        leaves.extend((v, t) for t in flat)
    static = {int(t.shape[0]) for _, t in leaves if t.shape[0] is not None}
    if len(static) > 1:
        raise ValueError(
            "All tensors of all `views` must have the same leading batch size. "
            f"Received batch sizes {sorted(static)}."
        )
    m = mini_batch_size
    if static:
        batch = static.pop()
        if batch % m:
            raise ValueError(
                f"The batch size ({batch}) must be divisible by `mini_batch_size` "
                f"({m}): every mini-batch has the same static shape. Use a batch "
                f"size that is a multiple of {m} (`drop_remainder=True` in "
                "tf.data; under a strategy, the per-replica batch) or a "
                "`mini_batch_size` that divides it."
            )
        return batch, batch // m
    batch = tf.shape(leaves[0][1])[0]
    checks = [
        tf.debugging.assert_equal(
            batch % m,
            0,
            message=f"The batch size must be divisible by mini_batch_size={m}",
        )
    ] + [
        tf.debugging.assert_equal(
            tf.shape(t)[0], batch, message="All views must have the same batch size"
        )
        for _, t in leaves[1:]
    ]
    with tf.control_dependencies(checks):
        return tf.identity(batch), tf.identity(batch // m)


def _split(value, n, m):
    """`[B, ...]` -> `[n, m, ...]` with a static `m` (and `n` when known)."""
    value = tf.convert_to_tensor(value)
    shape = tf.concat([tf.stack([n, m]), tf.shape(value)[1:]], axis=0)
    chunks = tf.reshape(value, shape)
    static_n = n if isinstance(n, int) else None
    chunks.set_shape(tf.TensorShape([static_n, m]).concatenate(value.shape[1:]))
    return chunks


def _chunk(chunked_views, i):
    return [tf.nest.map_structure(lambda c: c[i], view) for view in chunked_views]


def _as_embeddings(value, v):
    value = tf.convert_to_tensor(value)
    if not value.dtype.is_floating or value.shape.rank != 2:
        raise ValueError(
            "`embed_fn` must return float embeddings of shape [batch, dim]. "
            f"For views[{v}] it returned dtype {value.dtype.name}, shape "
            f"{value.shape}."
        )
    return tf.cast(value, tf.float32)


def seed_generator_states(model):
    """The state variables of every `keras.random.SeedGenerator` in `model`.

    Dropout (and every other seeded random layer) draws its seeds from these
    `int64[2]` variables; restoring them replays the same random masks.

    Args:
        model: a `keras.Layer` / `keras.Model`.

    Returns:
        A list of variables (empty for a model without random layers).
    """
    states, seen = [], set()
    for layer in compat.flatten_layers(model):
        for generator in compat.seed_generators(layer):
            if id(generator.state) not in seen:
                seen.add(id(generator.state))
                states.append(generator.state)
    return states


def _snapshot(variables):
    return [tf.identity(tf.convert_to_tensor(v)) for v in variables]


def _restore(variables, values):
    for variable, value in zip(variables, values):
        variable.assign(value)


# --------------------------------------------------------------------------
# The three passes.
# --------------------------------------------------------------------------


def _embed_without_tape(embed_fn, views, n, m, unroll):
    """Pass 1: the `[B, dim]` float32 embeddings of every view, no activations kept."""
    chunked = [tf.nest.map_structure(lambda t: _split(t, n, m), view) for view in views]
    if unroll:
        outs = [[] for _ in views]
        for i in range(n):
            for v, chunk in enumerate(_chunk(chunked, i)):
                outs[v].append(tf.stop_gradient(_as_embeddings(embed_fn(chunk), v)))
        return [tf.concat(out, axis=0) for out in outs], chunked

    def body(i, arrays):
        chunks = _chunk(chunked, i)
        written = []
        for v, (array, chunk) in enumerate(zip(arrays, chunks)):
            embeddings = tf.stop_gradient(_as_embeddings(embed_fn(chunk), v))
            written.append(array.write(i, embeddings))
        return i + 1, written

    arrays = [tf.TensorArray(tf.float32, size=n, infer_shape=True) for _ in views]
    _, arrays = tf.while_loop(
        lambda i, _: i < n,
        body,
        (tf.constant(0), arrays),
        parallel_iterations=1,
        maximum_iterations=n,
    )
    embeddings = []
    for array in arrays:
        stacked = array.stack()  # [n, m, dim]
        flat = tf.reshape(stacked, tf.concat([[-1], tf.shape(stacked)[2:]], axis=0))
        flat.set_shape(tf.TensorShape([n * m if isinstance(n, int) else None]).concatenate(
            stacked.shape[2:]))
        embeddings.append(flat)
    return embeddings, chunked


def _chained_gradients(embed_fn, chunked, embedding_grads, n, m, variables, unroll):
    """Pass 3: `sum_chunks d/dW sum(e_chunk * G_chunk)`; None for unused variables.

    Each chunk of each view gets its own tape, and the views of a chunk run
    in sequence, so at most one `[m, ...]` mini-batch of activations is
    alive at a time.
    """
    grad_chunks = [_split(g, n, m) for g in embedding_grads]
    unused = set()

    def chunk_gradients(i):
        # One tape per view, run one after the other: only one view's
        # mini-batch activations are alive at a time.
        totals = [None] * len(variables)
        dependencies = []
        for v, chunk in enumerate(_chunk(chunked, i)):
            with tf.control_dependencies(dependencies):
                with tf.GradientTape() as tape:
                    embeddings = _as_embeddings(embed_fn(chunk), v)
                    surrogate = tf.reduce_sum(embeddings * grad_chunks[v][i])
                grads = tape.gradient(surrogate, variables)
            for k, grad in enumerate(grads):
                if grad is not None:
                    grad = tf.convert_to_tensor(grad)
                    totals[k] = grad if totals[k] is None else totals[k] + grad
            dependencies = [g for g in totals if g is not None]
        dense = []
        for k, (grad, variable) in enumerate(zip(totals, variables)):
            if grad is None:
                unused.add(k)
                grad = tf.zeros(variable.shape, variable.dtype)
            dense.append(grad)
        return dense

    if unroll:
        totals = None
        for i in range(n):
            grads = chunk_gradients(i)
            totals = grads if totals is None else [a + g for a, g in zip(totals, grads)]
    else:
        def body(i, totals):
            return i + 1, [a + g for a, g in zip(totals, chunk_gradients(i))]

        zeros = [tf.zeros(v.shape, v.dtype) for v in variables]
        _, totals = tf.while_loop(
            lambda i, _: i < n,
            body,
            (tf.constant(0), zeros),
            parallel_iterations=1,
            maximum_iterations=n,
        )
    return [None if k in unused else g for k, g in enumerate(totals)]


@tf.autograph.experimental.do_not_convert
def cached_contrastive_gradients(
    embed_fn,
    loss_fn,
    views,
    mini_batch_size,
    variables,
    *,
    random_state=None,
    loss_scale=None,
    unroll=False,
):
    """Loss and parameter gradients of a contrastive loss, with cached embeddings.

    GradCache (Gao et al., 2021): peak activation memory is that of one
    mini-batch of `mini_batch_size` rows, whatever the batch size, and the
    gradients equal those of the ordinary step (one tape around the whole
    batch) up to float round-off. See the module docstring for the three
    passes. Works eagerly, inside `tf.function` (with `jit_compile=True` as
    well) and in a `tf.distribute` replica context, where each replica chunks
    its local batch and `loss_fn` may gather candidates across replicas
    (`kobjectives.ops.info_nce` does): the embedding gradients of pass 2 then
    already hold every replica's pull on this replica's embeddings, and the
    returned gradients are this replica's share, to be summed over replicas
    as Keras' optimizers do.

    Call it outside any `tf.GradientTape`: an enclosing tape would record
    pass 1 and keep its activations.

    Args:
        embed_fn: callable, one view's input structure for `m` rows ->
            float embeddings `[m, dim]` (e.g. `lambda x: model(x,
            training=True)`). Called once per mini-batch and view in pass 1
            and again in pass 3, always in the same order.
        loss_fn: callable, the list of float32 embeddings `[B, dim]` (one per
            view, in the order of `views`) -> scalar loss, e.g.
            `lambda e: global_weighted_mean(info_nce(e[0], e[1]), 1.0)`. It
            may use trainable variables of its own (a learnable temperature);
            their gradients are included when they are in `variables`.
        views: non-empty list of input structures (tensors or nested dicts /
            lists of tensors), one per view, every tensor with the same
            leading batch size `B`, a multiple of `mini_batch_size`.
        mini_batch_size: positive int `m`, the rows embedded at once.
        variables: the variables to differentiate (e.g.
            `model.trainable_variables`).
        random_state: optional list of variables holding the embedder's
            random state, snapshotted before pass 1 and restored before pass 3
            so both passes draw the same dropout masks; use
            `seed_generator_states(model)`. Without it, pass 3 draws fresh
            masks and the result is exact only without dropout.
        loss_scale: optional multiplier of the loss before differentiation
            (`optimizer.scale_loss(1.0)` under float16 loss scaling); the
            returned gradients are scaled by it, the returned loss is not.
        unroll: unroll Python loops over the `B / m` chunks instead of
            `tf.while_loop` (`B` must then be static).

    Returns:
        `(loss, gradients, embeddings)`: the scalar loss, a list of gradients
        aligned with `variables` (dense tensors; `None` for a variable that
        affects neither the embeddings nor the loss), and the list of float32
        embeddings `[B, dim]` of pass 1 (no gradient).

    Raises:
        ValueError: `mini_batch_size` not a positive int, empty `views`,
            mismatched batch sizes, a static batch size not divisible by
            `mini_batch_size`, or `embed_fn` not returning `[m, dim]` floats.
            A dynamic batch size is checked at run time.

    Reference:
        Gao, Zhang, Han and Callan, 2021, "Scaling Deep Contrastive Learning
        Batch Size under Memory Limited Setup",
        https://arxiv.org/abs/2101.06983.

    Example:

    >>> import keras, numpy as np, tensorflow as tf
    >>> from kobjectives import ops
    >>> encoder = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    >>> rng = np.random.default_rng(0)
    >>> views = [rng.normal(size=(8, 6)).astype("float32") for _ in range(2)]
    >>> loss_fn = lambda e: ops.global_weighted_mean(ops.info_nce(e[0], e[1]), 1.0)
    >>> loss, grads, _ = cached_contrastive_gradients(
    ...     encoder, loss_fn, views, 2, encoder.trainable_variables)
    >>> with tf.GradientTape() as tape:  # the ordinary, uncached step
    ...     plain = loss_fn([encoder(v) for v in views])
    >>> reference = tape.gradient(plain, encoder.trainable_variables)
    >>> bool(np.allclose(loss, plain, atol=1e-5))
    True
    >>> all(np.allclose(g, r, atol=1e-4) for g, r in zip(grads, reference))
    True
    """
    m = _check_mini_batch_size(mini_batch_size)
    views = list(views) if isinstance(views, (list, tuple)) else views
    _, n = _batch_size(views, m)
    if unroll and not isinstance(n, int):
        raise ValueError("`unroll=True` needs a static batch size.")
    variables = list(variables)
    random_state = list(random_state or ())
    initial_state = _snapshot(random_state)

    # Pass 1: embeddings without activations.
    embeddings, chunked = _embed_without_tape(embed_fn, views, n, m, unroll)

    # Pass 2: full-batch loss, d loss / d embeddings (and d loss / d W for
    # variables the loss itself uses).
    with tf.GradientTape() as tape:
        tape.watch(embeddings)
        loss = tf.convert_to_tensor(loss_fn(embeddings))
        if loss.shape.rank not in (None, 0):
            raise ValueError(f"`loss_fn` must return a scalar. Received shape {loss.shape}.")
        scaled = loss if loss_scale is None else loss * tf.cast(loss_scale, loss.dtype)
    grads = tape.gradient(scaled, embeddings + variables)
    embedding_grads = [
        tf.zeros_like(e) if g is None else tf.cast(g, tf.float32)
        for e, g in zip(embeddings, grads[: len(embeddings)])
    ]
    loss_grads = grads[len(embeddings):]

    # Pass 3: replay the randomness, re-embed under a tape, chain.
    with tf.control_dependencies(embedding_grads):
        _restore(random_state, initial_state)
    with tf.control_dependencies(embedding_grads):
        chained = _chained_gradients(
            embed_fn, chunked, embedding_grads, n, m, variables, unroll
        )
    gradients = []
    for direct, through in zip(loss_grads, chained):
        if direct is not None:
            direct = tf.convert_to_tensor(direct)
        if direct is None:
            gradients.append(through)
        elif through is None:
            gradients.append(direct)
        else:
            gradients.append(direct + through)
    # Every returned gradient waits for all of them: the gradient of a late
    # layer does not depend on that layer's own variable read, so without
    # this an optimizer update in the same graph could overwrite a variable
    # before an unrolled pass 3 has read it (observed with `unroll=True`).
    done = [g for g in gradients if g is not None]
    with tf.control_dependencies(done):
        gradients = [None if g is None else tf.identity(g) for g in gradients]
    return loss, gradients, embeddings


@tf.autograph.experimental.do_not_convert
def contrastive_gradients(
    embed_fn, loss_fn, views, variables, mini_batch_size=None, *, loss_scale=None
):
    """The ordinary (uncached) step: one tape around the whole batch.

    The reference `cached_contrastive_gradients` is equal to. With
    `mini_batch_size`, the views are embedded chunk by chunk in the order
    the cached step uses (same dropout masks, given the same random state),
    but every activation is still kept until the backward pass.

    Args:
        embed_fn, loss_fn, views, variables, loss_scale: as in
            `cached_contrastive_gradients`.
        mini_batch_size: None (embed each view at once) or a positive int.

    Returns:
        `(loss, gradients, embeddings)` as `cached_contrastive_gradients`
        (gradients dense, `None` for unused variables).
    """
    m = _check_mini_batch_size(mini_batch_size, allow_none=True)
    views = list(views)
    variables = list(variables)
    with tf.GradientTape() as tape:
        if m is None:
            embeddings = [_as_embeddings(embed_fn(view), v) for v, view in enumerate(views)]
        else:
            batch, n = _batch_size(views, m)
            if not isinstance(n, int):
                raise ValueError("`mini_batch_size` needs a static batch size here.")
            parts = [[] for _ in views]
            for i in range(n):
                for v, view in enumerate(views):
                    chunk = tf.nest.map_structure(lambda t: t[i * m:(i + 1) * m], view)
                    parts[v].append(_as_embeddings(embed_fn(chunk), v))
            embeddings = [tf.concat(p, axis=0) for p in parts]
        loss = tf.convert_to_tensor(loss_fn(embeddings))
        scaled = loss if loss_scale is None else loss * tf.cast(loss_scale, loss.dtype)
    grads = tape.gradient(scaled, variables)
    grads = [None if g is None else tf.convert_to_tensor(g) for g in grads]
    return loss, grads, [tf.stop_gradient(e) for e in embeddings]


# --------------------------------------------------------------------------
# The objective.
# --------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="kobjectives")
class CachedContrastiveEncoder(Objective):
    """Contrastive (InfoNCE) training of an embedder with GradCache.

    The training step (the `Objective` hook `compute_gradients`) computes
    the in-batch InfoNCE loss of the whole batch (and, under
    `tf.distribute`, of the global batch: negatives are gathered from every
    replica) while holding the activations of only `mini_batch_size` rows
    at a time: see `cached_contrastive_gradients`. Batches of thousands
    of pairs fit in the memory of a 64-row step, at the cost of a second
    forward pass. The gradients (and so the training trajectory) equal an
    uncached step's; dropout masks are replayed between the passes (the
    embedder's `SeedGenerator` states are restored), so dropout > 0 is exact
    too, relative to an uncached step embedding the same mini-batches.

    Per-example losses are `kobjectives.ops.info_nce` (positives of the
    batch, then hard negatives, as candidates), reduced with
    `kobjectives.ops.global_weighted_mean` (optional `sample_weight` per
    anchor), so a mirrored run matches one device. It is the objective's one
    named loss, `"contrastive"` (logged as `contrastive_loss`); weight
    regularizers of the embedder add the share `"layer_losses"`, both summed
    by the base `Objective` (`combine_gradients`).

    Args:
        embedder: a `keras.Model` mapping one view's inputs (a tensor or a
            dict, e.g. `{"token_ids", "segment_ids", "padding_mask"}`) to
            float embeddings `[batch, dim]` (pool token states first). It is
            serialized with the objective.
        mini_batch_size: positive int, the rows embedded at once (the
            per-replica batch must be a multiple of it), or None for the
            ordinary, uncached step (one tape over the whole batch; the
            baseline of `benchmarks/cached_contrastive.py`).
        temperature: positive float, logits are `similarity / temperature`
            (0.05 as SimCSE).
        similarity: `"cosine"` or `"dot"`.
        symmetric: also classify each positive among the anchors and average
            the two directions.
        unroll: unroll the chunk loops in Python instead of `tf.while_loop`
            (needs a static batch size, e.g. `drop_remainder=True`). Measured
            on CPU (`benchmarks/RESULTS.md`): without XLA the unrolled step
            ran about 3x faster, with trace time growing with `B / m`
            (18 s vs 5 s at 16 chunks); with `jit_compile=True` the
            while-loop step is within noise of it and compiles 3x faster.
        **kwargs: passed to `Objective` (`loss_weights`) and `keras.Model`
            (e.g. `name`).

    Inputs: `x = {"anchor": view, "positive": view}` with an optional
        `"negative": view` (one hard negative per anchor); each view is what
        `embedder` takes, with batch size `B`. `y` is ignored;
        `sample_weight` (optional, `[B]`) weights the anchors.

    Outputs: `call(x)` returns `{"anchor": [B, dim], "positive": ...}` (the
        embedder's output per view) for a dict of views, else
        `embedder(x)`.

    The per-replica batch must be a multiple of `mini_batch_size`: with
    `fit` on arrays, use a sample count that is a multiple of `batch_size`
    (the last, partial batch fails otherwise), or a `tf.data` pipeline with
    `drop_remainder=True`.

    Limitations: one hard negative per anchor; the embedder's non-random
    state updates (BatchNorm moving statistics) would be applied in both
    passes; activity-regularization losses (`add_loss` inside the embedder)
    are not supported (weight regularizers are).

    Reference:
        Gao, Zhang, Han and Callan, 2021, "Scaling Deep Contrastive Learning
        Batch Size under Memory Limited Setup",
        https://arxiv.org/abs/2101.06983.

    Example:

    >>> import keras, keras_hub, numpy as np
    >>> backbone = keras_hub.models.BertBackbone(
    ...     vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=8)
    >>> inputs = backbone.input
    >>> pooled = keras.layers.GlobalAveragePooling1D()(
    ...     backbone.output["sequence_output"], mask=inputs["padding_mask"])
    >>> embedder = keras.Model(inputs, pooled)
    >>> def view(seed):
    ...     ids = np.random.default_rng(seed).integers(5, 50, (4, 8))
    ...     return {"token_ids": ids, "segment_ids": 0 * ids,
    ...             "padding_mask": np.ones_like(ids)}
    >>> model = CachedContrastiveEncoder(embedder, mini_batch_size=2)
    >>> model.compile(optimizer=keras.optimizers.Adam(1e-4))
    >>> history = model.fit({"anchor": view(0), "positive": view(1)}, batch_size=4,
    ...                     epochs=1, verbose=0)  # 4 x 4 scores, 2 mini-batches of 2
    >>> sorted(history.history)
    ['contrastive_loss', 'loss']
    >>> model.embed(view(2)).shape
    TensorShape([4, 16])
    """

    # Sub-models `Objective.get_config` / `from_config` (de)serialize.
    trained_models = ("embedder",)
    exported_model = "embedder"
    loss_names = ("contrastive",)

    def __init__(
        self,
        embedder,
        mini_batch_size=64,
        temperature=0.05,
        similarity="cosine",
        symmetric=False,
        unroll=False,
        **kwargs,
    ):
        if not isinstance(embedder, keras.Model):
            raise TypeError(
                "`embedder` must be a keras.Model mapping a view's inputs to "
                f"embeddings [batch, dim]. Received: {type(embedder).__name__}"
            )
        mini_batch_size = _check_mini_batch_size(mini_batch_size, allow_none=True)
        # Validate eagerly, as info_nce would while tracing.
        from kobjectives.ops import contrastive as contrastive_ops

        contrastive_ops._check_positive(
            "temperature", temperature, "typical values are 0.01-0.1; SimCSE uses 0.05"
        )
        contrastive_ops._check_choice("similarity", similarity, ("cosine", "dot"))
        if not isinstance(symmetric, bool):
            raise ValueError(f"`symmetric` must be a bool. Received: symmetric={symmetric!r}")
        super().__init__(**kwargs)
        self.embedder = embedder
        self.mini_batch_size = mini_batch_size
        self.temperature = float(temperature)
        self.similarity = similarity
        self.symmetric = symmetric
        self.unroll = bool(unroll)
        self.built = embedder.built

    # -- forward ---------------------------------------------------------

    def embed(self, inputs, training=False):
        """One view's inputs -> embeddings `[batch, dim]`."""
        return self.embedder(inputs, training=training)

    def export_outputs(self, inputs):
        """Inference outputs for `kobjectives.export.export_saved_model`:
        the `embeddings` `[batch, dim]`."""
        return {"embeddings": self.embed(inputs, training=False)}

    def call(self, inputs, training=False):
        if isinstance(inputs, dict) and set(inputs) <= set(_VIEW_KEYS) and inputs:
            return {k: self.embed(v, training=training) for k, v in inputs.items()}
        return self.embed(inputs, training=training)

    def _views(self, x):
        """`(keys, views)`: the view names of `x` in the order they are
        embedded (anchor, positive, negative) and their inputs."""
        if not isinstance(x, dict) or "anchor" not in x or "positive" not in x:
            keys = sorted(x) if isinstance(x, dict) else type(x).__name__
            raise ValueError(
                "CachedContrastiveEncoder expects x = {'anchor': view, "
                "'positive': view[, 'negative': view]}. Received: "
                f"{keys}"
            )
        unknown = set(x) - set(_VIEW_KEYS)
        if unknown:
            raise ValueError(
                f"Unknown input keys {sorted(unknown)}; expected 'anchor', "
                "'positive' and optionally 'negative'."
            )
        keys = [k for k in _VIEW_KEYS if k in x]
        return keys, [x[k] for k in keys]

    # -- the loss and the steps --------------------------------------------

    def compute_losses(self, x, y, y_pred, sample_weight=None, training=True):
        """`{"contrastive": (per-anchor InfoNCE, anchor weights)}` of the
        embeddings `y_pred` (`{"anchor", "positive"[, "negative"]}`, each
        `[B, dim]`); `sample_weight` (optional `[B]`) weights the anchors."""
        losses = info_nce(
            y_pred["anchor"],
            y_pred["positive"],
            y_pred.get("negative"),
            temperature=self.temperature,
            similarity=self.similarity,
            symmetric=self.symmetric,
        )
        return {"contrastive": (losses, 1.0 if sample_weight is None else sample_weight)}

    def compute_gradients(self, x, y, sample_weight, variables):
        """The training step's loss and gradients (`Objective.compute_gradients`):
        GradCache's three passes (`cached_contrastive_gradients`), or with
        `mini_batch_size=None` one tape over the whole batch
        (`contrastive_gradients`); the layers' own losses (weight
        regularizers) as the share `"layer_losses"`."""
        keys, views = self._views(x)
        loss_scale = self.optimizer.scale_loss(tf.constant(1.0))

        def embed_fn(chunk):
            return self.embed(chunk, training=True)

        def loss_fn(embeddings):
            terms = self.loss_terms(x, y, dict(zip(keys, embeddings)), sample_weight)
            return terms["contrastive"]

        if self.mini_batch_size is None:
            loss, grads, embeddings = contrastive_gradients(
                embed_fn, loss_fn, views, variables, loss_scale=loss_scale
            )
        else:
            loss, grads, embeddings = cached_contrastive_gradients(
                embed_fn,
                loss_fn,
                views,
                self.mini_batch_size,
                variables,
                random_state=seed_generator_states(self.embedder),
                loss_scale=loss_scale,
                unroll=self.unroll,
            )
        shares, gradients = {"contrastive": loss}, {"contrastive": grads}
        if self.losses:
            with tf.GradientTape() as tape:
                shares["layer_losses"] = self.add_layer_losses(tf.constant(0.0))
                scaled = self.optimizer.scale_loss(shares["layer_losses"])
            gradients["layer_losses"] = tape.gradient(scaled, variables)
        return shares, gradients, dict(zip(keys, embeddings))

    def test_step(self, data):
        # Embeds in mini-batches as training does (the memory of one
        # mini-batch); the loss is the contrastive one, without the layers'.
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        keys, views = self._views(x)
        if self.mini_batch_size is None:
            embeddings = [tf.cast(self.embed(v), tf.float32) for v in views]
        else:
            _, n = _batch_size(views, self.mini_batch_size)
            embeddings, _ = _embed_without_tape(
                lambda chunk: self.embed(chunk), views, n, self.mini_batch_size, False
            )
        y_pred = dict(zip(keys, embeddings))
        self.track_loss(self.weighted_total(self.loss_terms(
            x, y, y_pred, sample_weight, training=False)), x)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    # -- serialization ---------------------------------------------------

    def get_config(self):
        config = super().get_config()  # the embedder (`trained_models`)
        config.update(
            {
                "mini_batch_size": self.mini_batch_size,
                "temperature": self.temperature,
                "similarity": self.similarity,
                "symmetric": self.symmetric,
                "unroll": self.unroll,
            }
        )
        return config
