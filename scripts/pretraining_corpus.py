"""A causal-LM pretraining corpus from the allowed parts of `../shared/data`,
for `kobjectives train clm --data 'OUT/*.txt'` before the HH-RLHF SFT run
(`bash scripts/preference_figures.sh pretrain sft_pretrained ...`).

Writes four text files into OUT, one document a line (whitespace collapsed):

- `war_and_peace.txt`: the novel's paragraphs, the Gutenberg footer (from
  line 64853) cut;
- `shakespeare.txt`: tinyshakespeare's paragraphs (speeches);
- `wikitext2_valid.txt`: WikiText-2 `valid.txt`, a line a document (its
  `test.txt` is reserved and not read);
- `hh_rlhf_train.txt`: the prompt and chosen answer of the HH-RLHF train
  subsets (`helpful-base`, `helpful-rejection-sampled`, `harmless-base`; the
  reserved `helpful-online` rows are skipped before anything else of them is
  read), less the dialogues that the `sft` run holds out (its default split:
  5%, seed 0), so that its held-out perplexity stays held out.

Usage: python scripts/pretraining_corpus.py OUT [--shared ../shared/data]
"""

import argparse
import json
import pathlib
import re

from kobjectives import data as data_lib

TRAIN_SUBSETS = ("helpful-base", "helpful-rejection-sampled", "harmless-base")
WAR_AND_PEACE_FOOTER_LINE = 64853


def one_line(text):
    return re.sub(r"\s+", " ", text).strip()


def paragraphs(text):
    return [one_line(p) for p in re.split(r"\n\s*\n", text) if one_line(p)]


def hh_rlhf_documents(shared):
    """Prompt + chosen of the train subsets' rows, less the sft run's
    held-out dialogues (matched by their turns' text)."""
    dialogues = data_lib.read_hh_rlhf(shared / "hh_rlhf", subsets=list(TRAIN_SUBSETS),
                                      target="chosen")
    _, held_out = data_lib.split_examples(dialogues, 0.05, seed=0)  # the sft run's split
    held_out = {one_line(" ".join(turn["content"] for turn in d)) for d in held_out}
    documents = []
    with open(shared / "hh_rlhf" / "hh_test_prompt_chosen_rejected.jsonl") as file:
        for line in file:
            row = json.loads(line)
            if row["subset"] not in TRAIN_SUBSETS:
                continue
            text = row["prompt"] + row["chosen"]
            turns = re.split(r"\n\nHuman: |\n\nAssistant: ?", text)
            if one_line(" ".join(t for t in turns if t.strip())) not in held_out:
                documents.append(one_line(text))
    return documents


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--shared", type=pathlib.Path, default=pathlib.Path("../shared/data"))
    args = parser.parse_args()
    shared = args.shared.expanduser()
    novel = (shared / "gutenberg_war_and_peace" / "war_and_peace.txt").read_text(
        encoding="utf-8-sig").splitlines()[:WAR_AND_PEACE_FOOTER_LINE - 1]
    corpus = {
        "war_and_peace": paragraphs("\n".join(novel)),
        "shakespeare": paragraphs((shared / "tinyshakespeare" / "input.txt").read_text()),
        "wikitext2_valid": [one_line(line) for line in
                            (shared / "wikitext2" / "valid.txt").read_text().splitlines()
                            if one_line(line)],
        "hh_rlhf_train": hh_rlhf_documents(shared),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name, documents in corpus.items():
        (args.out / f"{name}.txt").write_text("\n".join(documents) + "\n")
        print(f"{name}: {len(documents)} documents, {sum(map(len, documents)) / 1e6:.2f} M "
              "characters")


if __name__ == "__main__":
    main()
