import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from kobjectives.export import GENERATE
from kobjectives.export import PromptPreprocessor
from kobjectives.export import TextGenerator
from kobjectives.export import export_saved_model
from kobjectives.objectives import CausalLanguageModel

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + "a b c d e f g h".split()
L = 10


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(3)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=len(VOCAB), num_layers=1, num_heads=2, hidden_dim=8,
        intermediate_dim=16, max_sequence_length=L)
    objective = CausalLanguageModel(backbone)
    objective(objective_inputs(np.ones([1, L], np.int32)))
    return objective


def objective_inputs(token_ids):
    return {"token_ids": tf.constant(token_ids), "padding_mask": tf.ones_like(token_ids)}


@pytest.fixture(scope="module")
def tokenizer():
    return keras_hub.models.BertTokenizer(VOCAB)


def greedy_by_hand(model, ids, stop=None, steps=None):
    """Argmax decoding one token at a time, from the full window's logits."""
    ids = list(ids)
    new = []
    while len(ids) < L and (steps is None or len(new) < steps):
        window = np.zeros([1, L], np.int32)
        window[0, :len(ids)] = ids
        logits = model.export_outputs(objective_inputs(window))["logits"].numpy()
        token = int(np.argmax(logits[0, len(ids) - 1]))
        ids.append(token)
        if token == stop:
            break
        new.append(token)
    return new


def test_greedy_generation_equals_argmax_decoding_by_hand_for_prompts_of_any_length(
        model, tokenizer):
    generator = TextGenerator(model, PromptPreprocessor(tokenizer, L), tokenizer)
    prompts = ["a b c d", "e", "f g"]
    out = generator(tf.constant(prompts))
    assert out["token_ids"].shape == (3, L)
    for row, prompt in enumerate(prompts):
        prompt_ids = [2] + [VOCAB.index(word) for word in prompt.split()]
        expected = greedy_by_hand(model, prompt_ids)
        # The prompt stays as it was; the rest is the hand decoding.
        np.testing.assert_array_equal(out["token_ids"][row].numpy(), prompt_ids + expected)
        assert out["text"][row].numpy().decode() == " ".join(VOCAB[i] for i in expected)


def test_stop_tokens_end_a_row_and_max_new_tokens_caps_the_text(model, tokenizer):
    free = TextGenerator(model, PromptPreprocessor(tokenizer, L), tokenizer)
    prompt_ids = [2, VOCAB.index("c")]
    first = greedy_by_hand(model, prompt_ids)
    # The first generated token that did not come before: the text stops before it.
    cut = next(k for k in range(1, len(first)) if first[k] not in first[:k])
    stopped = TextGenerator(model, PromptPreprocessor(tokenizer, L), tokenizer,
                            stop_token_ids=[first[cut]])
    out = stopped(tf.constant(["c"]))["text"][0].numpy().decode()
    assert out == " ".join(VOCAB[i] for i in first[:cut])
    capped = TextGenerator(model, PromptPreprocessor(tokenizer, L), tokenizer,
                           max_new_tokens=3)
    text = capped(tf.constant(["c"]))["text"][0].numpy().decode()
    assert text == " ".join(VOCAB[i] for i in first[:3])
    assert free(tf.constant(["c"]))["text"][0].numpy().decode().split()[:3] == text.split()


def test_max_new_tokens_ends_generation_after_the_longest_prompt(model, tokenizer):
    # The window is cut to the longest prompt and max_new_tokens (7 of 10
    # here): the shorter prompt generates to there, and nothing after.
    generator = TextGenerator(model, PromptPreprocessor(tokenizer, L), tokenizer,
                              max_new_tokens=2)
    out = generator(tf.constant(["a b c d", "e"]))
    assert out["token_ids"].shape == (2, L)
    for row, prompt in enumerate(["a b c d", "e"]):
        prompt_ids = [2] + [VOCAB.index(word) for word in prompt.split()]
        expected = greedy_by_hand(model, prompt_ids, steps=7 - len(prompt_ids))
        np.testing.assert_array_equal(out["token_ids"][row].numpy(),
                                      prompt_ids + expected + [0] * 3)
        assert out["text"][row].numpy().decode() == " ".join(VOCAB[i] for i in expected[:2])


def test_bad_arguments_are_named(model, tokenizer):
    preprocessor = PromptPreprocessor(tokenizer, L)
    with pytest.raises(TypeError, match="export_outputs"):
        TextGenerator(object(), preprocessor, tokenizer)
    with pytest.raises(TypeError, match="preprocessor"):
        TextGenerator(model, None, tokenizer)
    with pytest.raises(TypeError, match="detokenize"):
        TextGenerator(model, preprocessor, object())
    with pytest.raises(ValueError, match="max_new_tokens"):
        TextGenerator(model, preprocessor, tokenizer, max_new_tokens=0)
    with pytest.raises(TypeError, match="generator"):
        export_saved_model(model, "/nonexistent-never-written", preprocessor,
                           generator=lambda text: text)


def test_saved_model_generate_signature_matches_in_process_generation(
        model, tokenizer, tmp_path):
    preprocessor = PromptPreprocessor(tokenizer, L)
    generator = TextGenerator(model, preprocessor, tokenizer, max_new_tokens=4)
    export_saved_model(model, tmp_path / "sm", preprocessor, generator=generator,
                       special_tokens_in_strings=False)
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    prompts = tf.constant(["a b", "h g f e d"])
    served = loaded.signatures[GENERATE](text=prompts)
    expected = generator(prompts)
    np.testing.assert_array_equal(served["token_ids"].numpy(), expected["token_ids"].numpy())
    assert served["text"].numpy().tolist() == expected["text"].numpy().tolist()


# -- encoder-decoder generation ---------------------------------------------------------

S2S_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(15)]
S, T, END = 8, 8, 3
# Row 2 is longer than the encoder holds (cut to its first S - 1 tokens).
INPUTS = ["w1 w2 w3", "w4", "w5 w9 w12 w1 w1 w1 w1 w1 w1", "w3 w3"]


@pytest.fixture(scope="module")
def seq2seq():
    """A tiny T5 `DenoisingSeq2Seq` whose weights are redrawn wider than
    the initialization, so greedy decoding depends on the input and varies
    within a row; and its WordPiece tokenizer."""
    from kobjectives.objectives import DenoisingSeq2Seq

    keras.utils.set_random_seed(2)
    backbone = keras_hub.models.T5Backbone(
        vocabulary_size=len(S2S_VOCAB), num_layers=1, num_heads=2, hidden_dim=16,
        intermediate_dim=32, dropout=0.0)
    objective = DenoisingSeq2Seq(backbone, logit_scale=1.0)
    ones = np.ones([1, 4], np.int32)
    objective({"encoder_token_ids": ones, "encoder_padding_mask": ones,
               "decoder_token_ids": ones, "decoder_padding_mask": ones})
    rng = np.random.default_rng(2)
    for variable in objective.weights:
        variable.assign(rng.normal(0.0, 0.5, variable.shape).astype("float32"))
    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(vocabulary=S2S_VOCAB, oov_token="[UNK]")
    return objective, tokenizer


def seq2seq_greedy_by_hand(objective, text, prompt=(0,), stop=None):
    """The encoder ids as training lays them out (first S - 1 tokens, [SEP],
    padding), then argmax decoding over a decoder sequence that grows one
    token at a time (no window, no padding): the full decoder ids, the stop
    token included."""
    ids = [S2S_VOCAB.index(word) for word in text.split()][:S - 1] + [END]
    encoder = np.asarray([ids + [0] * (S - len(ids))], np.int32)
    decoder = list(prompt)
    while len(decoder) < T:
        logits = objective.export_outputs({
            "encoder_token_ids": encoder, "encoder_padding_mask": (encoder != 0).astype("int32"),
            "decoder_token_ids": np.asarray([decoder], np.int32),
            "decoder_padding_mask": np.ones([1, len(decoder)], np.int32)})["logits"]
        token = int(np.argmax(logits[0, -1]))
        decoder.append(token)
        if token == stop:
            break
    return decoder


def test_seq2seq_greedy_generation_equals_argmax_decoding_by_hand_and_stops_at_the_end_id(
        seq2seq):
    from kobjectives.export import Seq2SeqTextGenerator

    objective, tokenizer = seq2seq
    generator = Seq2SeqTextGenerator(objective, tokenizer, encoder_sequence_length=S,
                                     target_length=T, eos_token_id=END)
    assert generator.stop_token_ids == (END,)  # the end id, by default
    out = generator(tf.constant(INPUTS))
    assert out["token_ids"].shape == (4, T) and out["token_ids"].dtype == tf.int32
    assert out["text"].shape == (4,) and out["text"].dtype == tf.string
    stopped = 0
    for row, text in enumerate(INPUTS):
        expected = seq2seq_greedy_by_hand(objective, text, stop=END)
        # The window starts with the decoder start id (T5: the padding id).
        got = out["token_ids"][row].numpy().tolist()
        assert got[:len(expected)] == expected, row
        new = expected[1:]
        if new[-1] == END:
            stopped += 1
            new = new[:-1]  # the end id is not part of the text
        assert out["text"][row].numpy().decode() == " ".join(S2S_VOCAB[i] for i in new)
    # The model of the fixture ends two rows early (after 5 and 2 tokens)
    # and fills the window in the others.
    assert stopped == 2
    # No stop: the whole window, the end id included where it comes.
    free = Seq2SeqTextGenerator(objective, tokenizer, S, T, eos_token_id=END,
                                stop_token_ids=())(tf.constant(INPUTS[:1]))
    expected = seq2seq_greedy_by_hand(objective, INPUTS[0])
    assert free["token_ids"][0].numpy().tolist() == expected and END in expected


def test_seq2seq_decoder_prompt_of_several_ids_is_forced_and_max_new_tokens_caps(seq2seq):
    from kobjectives.export import Seq2SeqTextGenerator

    objective, tokenizer = seq2seq
    prompt = (0, S2S_VOCAB.index("w7"))  # as BART's `[end] [start]`
    generator = Seq2SeqTextGenerator(objective, tokenizer, S, T, eos_token_id=END,
                                     decoder_prompt_ids=prompt, stop_token_ids=(),
                                     max_new_tokens=3)
    out = generator(tf.constant(INPUTS[1:2]))
    expected = seq2seq_greedy_by_hand(objective, INPUTS[1], prompt=prompt)
    # Generation ends 3 tokens after the prompt: the rest of the window stays padding.
    assert out["token_ids"][0].numpy().tolist() == (
        expected[:5] + [generator.padding_token_id] * (T - 5))
    assert out["text"][0].numpy().decode() == " ".join(S2S_VOCAB[i] for i in expected[2:5])


def test_seq2seq_generator_bad_arguments_are_named(seq2seq):
    from kobjectives.export import Seq2SeqTextGenerator

    objective, tokenizer = seq2seq
    with pytest.raises(TypeError, match="export_outputs"):
        Seq2SeqTextGenerator(object(), tokenizer, S, T)
    with pytest.raises(TypeError, match="tokenizer"):
        Seq2SeqTextGenerator(objective, None, S, T)
    with pytest.raises(ValueError, match="encoder_sequence_length"):
        Seq2SeqTextGenerator(objective, tokenizer, 1, T)
    with pytest.raises(ValueError, match="target_length"):
        Seq2SeqTextGenerator(objective, tokenizer, S, 1)
    with pytest.raises(ValueError, match="target_length"):  # no room after the prompt
        Seq2SeqTextGenerator(objective, tokenizer, S, 2, decoder_prompt_ids=(0, 5))
    with pytest.raises(ValueError, match="decoder_prompt_ids"):
        Seq2SeqTextGenerator(objective, tokenizer, S, T, decoder_prompt_ids=())
    with pytest.raises(ValueError, match="eos_token_id"):
        Seq2SeqTextGenerator(objective, tokenizer, S, T, eos_token_id=-1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        Seq2SeqTextGenerator(objective, tokenizer, S, T, max_new_tokens=0)
    generator = Seq2SeqTextGenerator(objective, tokenizer, S, T)
    with pytest.raises(ValueError, match="context"):
        generator.generate(tf.zeros([1, T], tf.int32), tf.range(T)[None, :] < 1)
