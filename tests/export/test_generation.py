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
