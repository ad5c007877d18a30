"""`LabelledRun`: what the fine-tuning runs on labelled examples (`classify`,
`tag`) share: where their data comes from (`data.files`, a `data.dataset`
under `data.shared_dir`, or the embedded corpus' task), its check, and the
split of the examples."""

import dataclasses
import glob
import os
import pathlib
import typing

from kobjectives.data import corpus_tasks
from kobjectives.data import labelled_pipelines as pipelines
from kobjectives.recipe import DataConfig
from kobjectives.runs.run import Run


def reserved_file_problems(files, reserved):
    """Problem lines for `data.files` entries that are reserved shared splits.

    Args:
        files: the `data.files` patterns.
        reserved: paths relative to the shared folder (e.g. `"sst2/test.tsv"`);
            a file whose path ends with one of them is refused.

    Returns:
        An iterator of `"data.files: ..."` lines.

    Example:

    >>> list(reserved_file_problems(["../shared/data/sst2/test.tsv", "mine.tsv"],
    ...                             ("sst2/test.tsv",)))
    ["data.files: '../shared/data/sst2/test.tsv' is a reserved split (final evaluation only); never train or tune on it"]
    """
    for pattern in files:
        path = pathlib.Path(os.path.expanduser(pattern)).as_posix()
        for name in reserved:
            if path == name or path.endswith("/" + name):
                yield (f"data.files: {pattern!r} is a reserved split (final evaluation only); "
                       "never train or tune on it")


@dataclasses.dataclass(frozen=True)
class LabelledDataConfig(DataConfig):
    """The `data` section of a `LabelledRun`'s recipe: its check. A
    subclass declares the fields it reads (`files`, `dataset`, `shared_dir`,
    with its own help) and sets `reserved_files` (paths relative to the
    shared folder that are refused as `data.files`)."""

    reserved_files: typing.ClassVar[tuple[str, ...]] = ()

    def check(self):
        yield from super().check()
        if self.files and self.dataset != "corpus":
            yield f"files: give data.files or data.dataset = {self.dataset!r}, not both"
        if len(self.files) > 2:
            yield (f"files: at most two files (the training file, then a held-out file); "
                   f"received {len(self.files)}")
        yield from (line[len("data."):] for line in
                    reserved_file_problems(self.files, self.reserved_files))


class LabelledRun(Run):
    """A `Run` over labelled examples rather than plain documents.

    A subclass sets `shared_datasets` (a `kobjectives.data.labelled_pipelines`
    table: `data.dataset` name -> its training and held-out files) and `task`
    (what the data is, for messages), and reads the examples in
    `load_documents`, with `data_files()` saying which files (None: the
    embedded corpus' task). Examples are split by a stable hash
    (`kobjectives.data.split_examples`).
    """

    shared_datasets: typing.ClassVar[dict] = {}
    task: typing.ClassVar[str] = ""
    search_space: typing.ClassVar[dict] = {
        "training.learning_rate": ("float", 1e-4, 3e-3, "log"),
        "training.warmup_steps": ("int", 0, 300),
        "training.weight_decay": ("float", 1e-3, 0.1, "log"),
        "model.dropout": ("choice", [0.0, 0.1]),
    }

    def check(self):
        yield from super().check()
        data = self.recipe.data
        if data.tfds:
            yield f"data.tfds = {data.tfds!r}: {self.task} reads data.files or data.dataset"
        elif not data.files and data.dataset != "corpus":
            try:
                pipelines.shared_dataset_files(data.dataset, self.shared_datasets, data.shared_dir)
            except FileNotFoundError as error:
                yield f"data.dataset = {data.dataset!r}: {error}"

    def data_files(self):
        """`(train_path, heldout_path or None, name)` of the files read, or
        `None` for the embedded corpus."""
        data = self.recipe.data
        if data.files:
            files = [sorted(glob.glob(os.path.expanduser(p)))[0] for p in data.files]
            return (pathlib.Path(files[0]),
                    pathlib.Path(files[1]) if len(files) > 1 else None, "files")
        if data.dataset == "corpus":
            return None
        train, heldout = pipelines.shared_dataset_files(
            data.dataset, self.shared_datasets, data.shared_dir)
        return train, heldout, data.dataset

    def split_documents(self, documents):
        """`(train, validation)`: a stable hash of each example decides."""
        return corpus_tasks.split_examples(
            documents, self.recipe.data.validation_fraction, seed=self.split_seed())
