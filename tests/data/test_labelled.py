"""Labelled-data readers: CoNLL tagged tokens (`read_conll`, `tag_set`,
`validate_tags`) and labelled TSV texts (`read_classification_tsv`)."""

import pickle

import pytest

from kobjectives.data import LabelledTexts
from kobjectives.data import read_classification_tsv
from kobjectives.data import read_conll
from kobjectives.data import tag_set
from kobjectives.data import validate_tags


def write(tmp_path, text, name="data.txt", newline="\n"):
    path = tmp_path / name
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


CONLL = (
    "-DOCSTART- -X- -X- O\n"
    "\n"
    "EU\tB-ORG\n"
    "rejects\tO\n"
    "German\tB-MISC\n"
    "\n"
    "\n"
    "Peter\tB-PER\n"
    "Blackburn\tI-PER\n"
    "-DOCSTART-\tO\n"
    "BRUSSELS\tB-LOC\n"
    "\n"
)


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_read_conll_skips_docstart_and_blank_runs(tmp_path, newline):
    sentences = read_conll(write(tmp_path, CONLL, newline=newline))
    assert sentences == [
        (["EU", "rejects", "German"], ["B-ORG", "O", "B-MISC"]),
        (["Peter", "Blackburn"], ["B-PER", "I-PER"]),
        (["BRUSSELS"], ["B-LOC"]),
    ]
    # Each sentence knows the line of its first word.
    assert [s.line for s in sentences] == [3, 8, 11]
    assert sentences[1].where(1) == f"{tmp_path / 'data.txt'}:9"
    words, tags = sentences[0]
    assert type(words) is list and type(tags) is list
    assert pickle.loads(pickle.dumps(sentences))[2].line == 11


def test_read_conll_original_four_columns_and_bom(tmp_path):
    text = "\ufeffEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n"
    assert read_conll(write(tmp_path, text)) == [(["EU", "rejects"], ["B-ORG", "O"])]


def test_read_conll_chinese_one_character_per_line(tmp_path):
    # CLUENER2020's layout: one character per line; a full-width space is a token.
    text = "浙\tB-company\n商\tI-company\n银\tI-company\n行\tI-company\n企\tO\n\u3000\tO\n"
    (words, tags), = read_conll(write(tmp_path, text))
    assert words == ["浙", "商", "银", "行", "企", "\u3000"]
    assert tag_set([(words, tags)]) == ["O", "B-company", "I-company"]


MALFORMED_CONLL = [
    ("EU\tB-ORG\nrejects\n", r"data.txt:2: expected 'token<TAB>tag'"),
    ("EU\tB-ORG\n\n\n\tO\n", r"data.txt:4: empty token"),
    ("EU\tB-ORG\nrejects\t \n", r"data.txt:2: empty tag"),
    ("EU\tB-ORG\n\nPeter\tB-PER\nBlackburn\tI-\n", r"data.txt:4: the tag 'I-' has no entity type"),
    ("EU\tI\n", r"data.txt:1: the tag 'I' has no entity type"),
    ("\n-DOCSTART-\tO\n\n", "no sentences"),
]


def test_read_conll_malformed_lines_name_the_line(tmp_path):
    for text, match in MALFORMED_CONLL:
        with pytest.raises(ValueError, match=match):
            read_conll(write(tmp_path, text))


def test_read_conll_checks_a_saved_tag_set(tmp_path):
    path = write(tmp_path, CONLL)
    with pytest.raises(ValueError, match=r"data.txt:11: the tag set does not match the data: "
                                         r"the tag 'B-LOC' is not in `tags`"):
        read_conll(path, tags=["O", "B-ORG", "I-ORG", "B-MISC", "I-MISC", "B-PER", "I-PER"])
    assert len(read_conll(path, tags=tag_set(read_conll(path)))) == 3
    with pytest.raises(FileNotFoundError):
        read_conll(tmp_path / "missing.txt")


def test_tag_set_is_o_then_b_and_i_per_sorted_type():
    sentences = [(["a", "b"], ["I-PER", "O"]), (["c"], ["B-LOC"]), (["d"], ["B-MISC"])]
    assert tag_set(sentences) == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-PER", "I-PER"]
    assert tag_set([(["a"], ["NN"]), (["b"], ["O"]), (["c"], ["DT"])], scheme=None) == [
        "O", "DT", "NN"]
    with pytest.raises(ValueError, match="'NN' is not a BIO tag"):
        tag_set([(["a"], ["NN"])])
    with pytest.raises(ValueError, match="scheme"):
        tag_set(sentences, scheme="bioes")


BAD_SENTENCES = [
    ([(["a"], ["O"]), ([], [])], None, "sentence 1: an empty sentence"),
    ([(["a", "b"], ["O"])], None, "2 words but 1 tags"),
    ([(["a"], ["B-"])], None, "sentence 0, word 0: the tag 'B-' has no entity type"),
    ([(["a", "b"], ["O", "B-X"])], ["O"],
     "sentence 0, word 1: the tag set does not match the data: the tag 'B-X'"),
    (["not a pair"], None, "expected a .words, tags. pair"),
]


def test_validate_tags_errors():
    for sentences, tags, match in BAD_SENTENCES:
        with pytest.raises(ValueError, match=match):
            validate_tags(sentences, tags)


def test_read_conll_real_conll2003_train(shared_data):
    path = shared_data / "ner" / "conll2003" / "train.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    sentences = read_conll(path)
    assert len(sentences) > 10000
    tags = tag_set(sentences)
    assert {t[2:] for t in tags if t != "O"} == {"LOC", "MISC", "ORG", "PER"}
    assert tags[0] == "O" and len(tags) == 9


def test_read_classification_tsv_sst2_layout(tmp_path):
    path = write(tmp_path, 'label\tsentence\n0\thide new "secretions"\n\n1\t  fun , too \n',
                 "train.tsv", newline="\r\n")
    data = read_classification_tsv(path)
    assert isinstance(data, LabelledTexts) and len(data) == 2
    assert data.texts == ['hide new "secretions"', "fun , too"]
    assert data.labels == [0, 1] and data.label_names == ["0", "1"]
    # By header name, with another split's label names.
    named = read_classification_tsv(path, text_columns="sentence", label_column="label",
                                    label_names=["1", "0"])
    assert named.labels == [1, 0] and named.label_names == ["1", "0"]


def test_read_classification_tsv_chinese_pairs_and_label_order(tmp_path):
    text = "label\ttext_a\ttext_b\n10\t酒店环境不错\t还可以\n9\t不太好吃\t一般\n2\t很好\t好\n"
    data = read_classification_tsv(write(tmp_path, text, "x.tsv"), text_columns=(1, 2))
    assert data.texts[0] == ("酒店环境不错", "还可以")
    assert data.label_names == ["2", "9", "10"] and data.labels == [2, 1, 0]  # numeric order
    words = read_classification_tsv(write(tmp_path, "pos\tgood\nneg\tbad\n", "y.tsv"),
                                    text_columns=1, header=False)
    assert words.label_names == ["neg", "pos"] and words.labels == [1, 0]


BAD_TSV = [
    ("label\tsentence\n0\tfine\n1\n", {}, r"x.tsv:3: expected at least 2 tab-separated"),
    ("label\tsentence\n0\t \n", {}, r"x.tsv:2: an empty text"),
    ("label\tsentence\n2\tfine\n", {"label_names": ["0", "1"]},
     r"x.tsv:2: the label '2' is not in `label_names`"),
    ("label\tsentence\n", {}, "no labelled rows"),
    ("label\tsentence\n0\tfine\n", {"text_columns": "text"}, "no column 'text'"),
    ("0\tfine\n", {"text_columns": "sentence", "header": False}, "header=False"),
]


def test_read_classification_tsv_errors(tmp_path):
    for text, kwargs, match in BAD_TSV:
        with pytest.raises(ValueError, match=match):
            read_classification_tsv(write(tmp_path, text, "x.tsv"), **kwargs)


def test_read_classification_tsv_real_files(shared_data):
    sst2 = shared_data / "sst2" / "dev.tsv"
    chinese = shared_data / "chinese" / "chnsenticorp_dev.tsv"
    if not (sst2.is_file() and chinese.is_file()):
        pytest.skip("SST-2 / ChnSentiCorp dev files not found")
    data = read_classification_tsv(sst2)  # header "label<TAB>content"
    assert len(data) == 872 and data.label_names == ["0", "1"] and sum(data.labels) == 444
    data = read_classification_tsv(chinese)  # "label<TAB>text_a"; texts hold quotes
    assert len(data) == 1200 and sum(data.labels) == 593
