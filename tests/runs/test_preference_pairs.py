"""The base of the preference runs (`kobjectives.runs.preference_pairs`):
pairs rendered for the reward SavedModel exactly as the files are read, a
pair that does not fit the window named by its file line with the recipe
keys that fix it, and skipped HH-RLHF rows logged in the run's words."""

import gzip
import json
import re
import warnings

import pytest

from kobjectives.data import preference_arrays
from kobjectives.data import read_preference_pairs
from kobjectives.data import tokenize_preference_pairs
from kobjectives.data.chat import DEFAULT_CHAT_TEMPLATE
from kobjectives.recipe import RecipeError
from kobjectives.runs.preference_pairs import render_pair_texts
from kobjectives.runs.reward import RenderedTextPreprocessor
from kobjectives.runs.sft import chat_tokenizer
from tests.harness import tiny_run

SYSTEM = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "What does json.loads do?"}
ROWS = [
    {"prompt": "What does json.dumps do?", "chosen": "Serialize obj to a JSON string.",
     "rejected": "Deserialize s to a Python object."},
    {"prompt": [SYSTEM, USER], "chosen": [{"role": "assistant", "content": "Deserialize s."}],
     "rejected": "Serialize obj."},
]


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_string_prompt_renders_as_the_file_reader_reads_it(tmp_path):
    read = read_preference_pairs(_write(tmp_path / "prefs.jsonl", ROWS))
    for row, pair in zip(ROWS, read):
        texts = render_pair_texts(pair)
        assert render_pair_texts((row["prompt"], row["chosen"], row["rejected"])) == texts
        assert render_pair_texts([row["prompt"], row["chosen"], row["rejected"]]) == texts
        assert render_pair_texts(row) == texts  # TRL's dict row
        # The chat layout the pairs are trained in: the prompt's turns, then the answer's.
        prompt, chosen, rejected = pair
        assert texts == tuple(DEFAULT_CHAT_TEMPLATE.render_text(
            prompt + [{"role": "assistant", "content": answer}]) for answer in (chosen, rejected))
    assert render_pair_texts(ROWS[0])[0] == (
        "<|user|>\nWhat does json.dumps do?<|end|>\n<|assistant|>\n"
        "Serialize obj to a JSON string.<|end|>\n")


def test_the_rendered_text_is_served_as_the_ids_the_pair_was_trained_on(tmp_path):
    """The reward SavedModel's preprocessor maps `render_pair_texts` of a
    string-prompt pair to the training ids of the same pair read from a file."""
    words = sorted({w for row in ROWS[:1] for key in ("prompt", "chosen", "rejected")
                    for w in re.findall(r"\w+|[^\w\s]", row[key].lower())})
    tokenizer = chat_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words, True)
    pair = read_preference_pairs(_write(tmp_path / "prefs.jsonl", ROWS[:1]))
    examples = tokenize_preference_pairs(pair, tokenizer, start_token_id=tokenizer.start_token_id)
    serve = RenderedTextPreprocessor(tokenizer.get_vocabulary(), True, 64,
                                     tokenizer.start_token_id)
    row = ROWS[0]
    texts = render_pair_texts((row["prompt"], row["chosen"], row["rejected"]))
    served = serve(list(texts))
    for side, answer_ids in enumerate((examples.chosen_ids[0], examples.rejected_ids[0])):
        trained = [tokenizer.start_token_id, *examples.prompt_ids[0], *answer_ids]
        length = int(served["padding_mask"][side].numpy().sum())
        assert served["token_ids"][side, :length].numpy().tolist() == trained


@pytest.mark.parametrize("truncation", ["keep_end", "keep_start"])
def test_a_text_too_long_for_the_window_is_served_as_it_was_trained(truncation):
    """Cut by the run's `data.truncation`: with `keep_end` the prompt loses
    its start and the answer stays (the judge of a long conversation sees
    the answer), as the training layout of the pair's longer answer."""
    words = [f"w{i}" for i in range(40)]
    tokenizer = chat_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words +
                               ["a1", "a2", "a3", "a4", "a5", "b1", "b2"], True)
    pair = ([{"role": "user", "content": " ".join(words)}], "a1 a2 a3 a4 a5", "b1 b2")
    # (a 40-word prompt, a window of 16)
    examples = tokenize_preference_pairs([pair], tokenizer,
                                         start_token_id=tokenizer.start_token_id)
    serve = RenderedTextPreprocessor(tokenizer.get_vocabulary(), True, 16,
                                     tokenizer.start_token_id, truncation=truncation)
    served = serve(list(render_pair_texts(pair)))
    if truncation == "keep_end":  # (training refuses the pair with keep_start)
        trained = preference_arrays(examples, 16, truncation=truncation)
        assert served["token_ids"][0].numpy().tolist() == trained["chosen_token_ids"][0].tolist()
    answer = [tokenizer.token_to_id(w) for w in ("b1", "b2", "<|end|>")]
    kept = served["token_ids"][1].numpy().tolist()
    if truncation == "keep_end":  # the shorter answer, whole, after the prompt's last tokens
        assert kept[-3:] == answer and kept[0] == tokenizer.start_token_id
        assert kept[-4] == tokenizer.token_to_id("<|assistant|>")
    else:  # the first 16 tokens: no answer left
        assert not set(answer) & set(kept)
    with pytest.raises(ValueError, match="`truncation` must be 'keep_end' or 'keep_start'"):
        RenderedTextPreprocessor(tokenizer.get_vocabulary(), True, 16, truncation="error")
    plain = [t for t in tokenizer.get_vocabulary() if t not in ("<|user|>", "<|assistant|>")]
    with pytest.raises(ValueError, match=r"`vocabulary` lacks the chat markers "
                       r"\['<\|user\|>', '<\|assistant\|>'\].*add_chat_tokens"):
        RenderedTextPreprocessor(plain, True, 16)


@pytest.mark.parametrize("pair, error, message", [
    ("abc", TypeError, "render_pair_texts takes a (prompt, chosen, rejected) triple or a "
                       "{'prompt', 'chosen', 'rejected'} dict. Received: str 'abc'"),
    (("p", "a"), TypeError, "render_pair_texts takes a (prompt, chosen, rejected) triple or a "
                            "{'prompt', 'chosen', 'rejected'} dict. Received: tuple \"('p', "
                            "'a')\""),
    ({"prompt": "p", "chosen": "a"}, ValueError,
     "pair: a dict pair needs 'prompt', 'chosen' and 'rejected'; it lacks ['rejected']."),
    (("p", {"role": "assistant", "content": "a"}, "b"), ValueError,
     "pair: 'chosen' must be a non-empty string, or a list of message dicts such as "
     "[{\"role\": \"assistant\", \"content\": ...}]. A single message dict is not an accepted "
     "form: wrap it in a list. Received: {'role': 'assistant', 'content': 'a'}"),
    (("  ", "a", "b"), ValueError, "pair: 'prompt' must be a non-empty string. Received: '  '"),
])
def test_render_pair_texts_refuses_what_is_not_a_pair(pair, error, message):
    with pytest.raises(error) as caught:
        render_pair_texts(pair)
    assert str(caught.value) == message


def _long_prompt_pairs(tmp_path):
    """12 pairs; line 10's prompt alone is longer than a 16-token window."""
    rows = [{"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": f"No {i}."}
            for i in range(12)]
    rows[9]["prompt"] = " ".join(f"word{i}" for i in range(30)) + "?"
    return _write(tmp_path / "prefs.jsonl", rows)


def test_a_pair_too_long_for_the_window_names_its_line_and_the_recipe_keys(tmp_path):
    path = _long_prompt_pairs(tmp_path)
    run = tiny_run("reward", tmp_path / "error", {"data.files": [str(path)],
                                                  "data.truncation": "error",
                                                  "model.sequence_length": 16})
    with pytest.raises(RecipeError) as caught:
        run.prepare()
    message = str(caught.value)
    assert re.fullmatch(
        rf"{re.escape(str(path))}:10: its prompt alone has \d+ tokens and fills the 15 the "
        r"window leaves for the prompt and completion \(after the start token, if any\)\. "
        r"Raise model\.sequence_length \(--sequence-length\), drop the long pairs, or set "
        r"data\.truncation = keep_end \(cut the prompt's start first\) or data\.truncation = "
        r"keep_start \(cut the completions' end first\)\.", message), message
    assert "truncation='" not in message and "`sequence_length`" not in message
    run = tiny_run("reward", tmp_path / "keep_start", {"data.files": [str(path)],
                                                       "data.truncation": "keep_start",
                                                       "model.sequence_length": 16})
    with pytest.raises(RecipeError) as caught:
        run.prepare()
    assert re.fullmatch(
        rf"{re.escape(str(path))}:10: the completion has no token left after truncation: the "
        r"prompt has \d+ tokens and fills the 15 left in the window, and data\.truncation = "
        r"keep_start never cuts the prompt\. Set data\.truncation = keep_end \(the prompt keeps "
        r"its last tokens\), raise model\.sequence_length \(--sequence-length\), or drop the "
        r"pair\.", str(caught.value)), str(caught.value)
    # keep_end (the default) cuts the prompt's start: the pair is kept, still named by its line.
    run = tiny_run("reward", tmp_path / "keep_end", {"data.files": [str(path)],
                                                     "model.sequence_length": 16})
    run.prepare()
    names = [name for split in ("train", "validation") for name in run.examples[split].names]
    assert sorted(names) == sorted(f"{path}:{line}" for line in range(1, 13))
    assert run.make_dataset("train", 4) is not None


def test_skipped_hh_rlhf_rows_are_logged_without_a_python_argument(tmp_path):
    folder = tmp_path / "shared" / "hh_rlhf"
    folder.mkdir(parents=True)
    good = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello",
            "rejected": "\n\nHuman: Hi\n\nAssistant: No"}
    bad = {"chosen": "\n\nHuman: Hi", "rejected": "\n\nHuman: Hi\n\nAssistant: No"}
    file = folder / "helpful-base.test.jsonl.gz"
    with gzip.open(file, "wt") as out:
        out.write("".join(json.dumps(row) + "\n" for row in [good, bad, good, bad, bad]))
    logs = []
    run = tiny_run("reward", tmp_path / "run", {
        "data.dataset": "hh_rlhf", "data.shared_dir": str(tmp_path / "shared"),
        "data.hh_rlhf_subsets": "helpful-base"}, log=logs.append)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning reaches the user
        pairs = run.load_pairs()
    assert [pair.where for pair in pairs] == [f"{file}:1", f"{file}:3"]
    assert logs == [f"data: 3 malformed HH-RLHF row(s) left out (the first: {file}:2: a dialogue "
                    "does not end with an assistant turn)"]
