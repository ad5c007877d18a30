"""Examples that know where they were read, so that errors raised long
after reading (tokenizing, truncating, after a train/validation split) name
the file and line instead of a position in some list.

A `Located` example (a tuple: a preference pair, a KTO row) or a
`LocatedConversation` (a list of chat turns: an SFT example) is equal to,
printed and JSON-encoded as the plain tuple or list, so it goes wherever
that goes (`kobjectives.data.split_examples` puts it on the same side);
`example_name` is how the functions that raise about examples name one.
"""


class Located(tuple):
    """An example's fields (a tuple) that also know where the example was
    read: `where`, e.g. `"prefs.jsonl:10"`.

    It is equal to, printed and JSON-encoded as the plain tuple, so it goes
    wherever the tuple goes; the functions that name examples in their
    errors (`kobjectives.data.tokenize_preference_pairs`, `kto_examples`)
    name it by `where` instead of its index in their input
    (`example_name`).

    Args:
        fields: an iterable, the tuple's items.
        where: optional str, how errors name the example.

    Example:

    >>> pair = Located(("Hi", "Hello!", "Go away."), "prefs.jsonl:10")
    >>> pair == ("Hi", "Hello!", "Go away."), pair.where
    (True, 'prefs.jsonl:10')
    >>> pair
    ('Hi', 'Hello!', 'Go away.')
    """

    def __new__(cls, fields, where=None):
        located = super().__new__(cls, fields)
        located.where = where
        return located


class LocatedConversation(list):
    """A conversation (a list of `{"role", "content"}` turns) that also
    knows where it was read: `where`, e.g. `"sft.jsonl:3"`.

    It is equal to, printed and JSON-encoded as the plain list (an SFT
    example of `kobjectives.data.read_sft_conversations`); errors about it
    (`kobjectives.data.tokenize_sft_examples`, the `sft` run's overlong
    examples) name it by `where` (`example_name`).

    Args:
        turns: an iterable, the list's items.
        where: optional str, how errors name the example.

    Example:

    >>> turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    >>> conversation = LocatedConversation(turns, "sft.jsonl:3")
    >>> conversation == turns, conversation.where
    (True, 'sft.jsonl:3')
    """

    def __init__(self, turns=(), where=None):
        super().__init__(turns)
        self.where = where


def example_name(example, index, what):
    """How errors name `example`, item `index` of the input called `what`:
    its `where` (a `Located` or `LocatedConversation`), else
    `"what[index]"`.

    Example:

    >>> example_name(Located(("p", "a", "b"), "prefs.jsonl:10"), 4, "pairs")
    'prefs.jsonl:10'
    >>> example_name(("p", "a", "b"), 4, "pairs")
    'pairs[4]'
    """
    where = getattr(example, "where", None)
    return where if isinstance(where, str) and where else f"{what}[{index}]"
