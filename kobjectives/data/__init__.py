"""kobjectives.data: text sources, deterministic splits and tokenizer training.

Text sources (each returns a `list[str]` of documents, in a deterministic
order, and never touches the network):

- `embedded_corpus()`: docstrings and pydoc reference topics of the running
  Python's standard library, the default demo data;
- `read_text_files(paths_or_globs, format="lines" | "paragraphs")`;
  `text_line_dataset(...)` streams huge line-per-document files instead;
- `tfds_texts(name, data_dir, ...)`: a tfds dataset already prepared in a
  local `data_dir`;
- `load_texts(data=None, tfds=None, data_dir=None, ...)`: the one entry
  point the CLI uses.

`train_validation_split(documents, validation_fraction, seed)` splits them
deterministically across processes.

Tokenizers: `train_wordpiece` / `train_sentencepiece` train locally (via
keras-hub), `save_vocabulary` / `load_vocabulary` store them with a run
(`vocab.txt` / `spm.model`), `build_tokenizer` returns the keras-hub
tokenizer, and `continuation_token_ids` lists the WordPiece `##` pieces for
whole-word masking.
"""

from kobjectives.data.corpus import MIN_DOCUMENT_CHARACTERS
from kobjectives.data.corpus import TEXT_FORMATS
from kobjectives.data.corpus import embedded_corpus
from kobjectives.data.corpus import load_texts
from kobjectives.data.corpus import read_text_files
from kobjectives.data.corpus import text_line_dataset
from kobjectives.data.corpus import tfds_texts
from kobjectives.data.split import train_validation_split
from kobjectives.data.tokenizers import SENTENCEPIECE_CONTROL_TOKENS
from kobjectives.data.tokenizers import SENTENCEPIECE_FILENAME
from kobjectives.data.tokenizers import SENTENCEPIECE_USER_DEFINED_SYMBOLS
from kobjectives.data.tokenizers import TOKENIZER_KINDS
from kobjectives.data.tokenizers import WORDPIECE_FILENAME
from kobjectives.data.tokenizers import WORDPIECE_RESERVED_TOKENS
from kobjectives.data.tokenizers import build_tokenizer
from kobjectives.data.tokenizers import continuation_token_ids
from kobjectives.data.tokenizers import load_vocabulary
from kobjectives.data.tokenizers import save_vocabulary
from kobjectives.data.tokenizers import train_sentencepiece
from kobjectives.data.tokenizers import train_wordpiece

__all__ = [
    "MIN_DOCUMENT_CHARACTERS",
    "SENTENCEPIECE_CONTROL_TOKENS",
    "SENTENCEPIECE_FILENAME",
    "SENTENCEPIECE_USER_DEFINED_SYMBOLS",
    "TEXT_FORMATS",
    "TOKENIZER_KINDS",
    "WORDPIECE_FILENAME",
    "WORDPIECE_RESERVED_TOKENS",
    "build_tokenizer",
    "continuation_token_ids",
    "embedded_corpus",
    "load_texts",
    "load_vocabulary",
    "read_text_files",
    "save_vocabulary",
    "text_line_dataset",
    "tfds_texts",
    "train_sentencepiece",
    "train_validation_split",
    "train_wordpiece",
]
from kobjectives.data.pipelines import chunk_token_ids
from kobjectives.data.pipelines import masked_lm_dataset
from kobjectives.data.pipelines import packed_windows_dataset
from kobjectives.data.pipelines import contrastive_dataset  # noqa: F401
from kobjectives.data.pipelines import tokenized_texts  # noqa: F401
from kobjectives.data.sts import SentencePairs  # noqa: F401
from kobjectives.data.sts import read_nli_triples  # noqa: F401
from kobjectives.data.sts import read_sick  # noqa: F401
from kobjectives.data.sts import read_stsb  # noqa: F401
from kobjectives.data.sts import split_sentences  # noqa: F401
from kobjectives.data.sts import split_nli_triples  # noqa: F401
from kobjectives.data.tokenizers import add_sentinel_tokens  # noqa: F401
from kobjectives.data.sentences import split_document_sentences  # noqa: F401
from kobjectives.data.sentences import sentence_documents  # noqa: F401
from kobjectives.data.sentences import sentence_pair_dataset  # noqa: F401
from kobjectives.data.labelled import LabelledTexts  # noqa: F401
from kobjectives.data.labelled import TaggedSentence  # noqa: F401
from kobjectives.data.labelled import read_classification_tsv  # noqa: F401
from kobjectives.data.labelled import read_conll  # noqa: F401
from kobjectives.data.labelled import tag_set  # noqa: F401
from kobjectives.data.labelled import validate_tags  # noqa: F401
from kobjectives.data.chat import DEFAULT_CHAT_TEMPLATE  # noqa: F401
from kobjectives.data.chat import HH_RLHF_TRAIN_SUBSETS  # noqa: F401
from kobjectives.data.chat import ChatTemplate  # noqa: F401
from kobjectives.data.chat import add_chat_tokens  # noqa: F401
from kobjectives.data.chat import check_conversation  # noqa: F401
from kobjectives.data.chat import parse_hh_rlhf  # noqa: F401
from kobjectives.data.chat import read_hh_rlhf  # noqa: F401
from kobjectives.data.sft import SFTExamples  # noqa: F401
from kobjectives.data.sft import best_fit_decreasing  # noqa: F401
from kobjectives.data.sft import pack_sft_examples  # noqa: F401
from kobjectives.data.sft import sft_dataset  # noqa: F401
from kobjectives.data.sft import tokenize_sft_examples  # noqa: F401
from kobjectives.data.corpus import Docstring  # noqa: F401
from kobjectives.data.corpus import stdlib_docstrings  # noqa: F401
from kobjectives.data.corpus_tasks import ENTITY_TAGS  # noqa: F401
from kobjectives.data.corpus_tasks import builtin_exception_names  # noqa: F401
from kobjectives.data.corpus_tasks import entity_tagging_task  # noqa: F401
from kobjectives.data.corpus_tasks import module_classification_task  # noqa: F401
from kobjectives.data.corpus_tasks import prompt_completion_task  # noqa: F401
from kobjectives.data.corpus_tasks import split_examples  # noqa: F401
from kobjectives.data.sft import ChatPromptPreprocessor  # noqa: F401
from kobjectives.data.preference import KTO_KEYS  # noqa: F401
from kobjectives.data.preference import KTO_REFERENCE_LOGPS_KEYS  # noqa: F401
from kobjectives.data.preference import PAIR_KEYS  # noqa: F401
from kobjectives.data.preference import REFERENCE_LOGPS_KEYS  # noqa: F401
from kobjectives.data.preference import KTOExamples  # noqa: F401
from kobjectives.data.preference import PreferenceExamples  # noqa: F401
from kobjectives.data.preference import collapsed_pairs  # noqa: F401
from kobjectives.data.preference import default_max_prompt_length  # noqa: F401
from kobjectives.data.preference import length_balanced_pairs  # noqa: F401
from kobjectives.data.preference import corpus_preference_pairs  # noqa: F401
from kobjectives.data.preference import kto_arrays  # noqa: F401
from kobjectives.data.preference import kto_dataset  # noqa: F401
from kobjectives.data.preference import kto_examples  # noqa: F401
from kobjectives.data.preference import looping_answer  # noqa: F401
from kobjectives.data.preference import preference_arrays  # noqa: F401
from kobjectives.data.preference import preference_dataset  # noqa: F401
from kobjectives.data.preference import read_hh_rlhf_pairs  # noqa: F401
from kobjectives.data.preference import tokenize_preference_pairs  # noqa: F401
from kobjectives.data.example_files import read_jsonl  # noqa: F401
from kobjectives.data.example_files import read_preference_pairs  # noqa: F401
from kobjectives.data.example_files import read_seq2seq_pairs  # noqa: F401
from kobjectives.data.example_files import read_sft_conversations  # noqa: F401
from kobjectives.data.example_files import read_preference_examples  # noqa: F401
from kobjectives.data.example_files import read_unpaired_rows  # noqa: F401
