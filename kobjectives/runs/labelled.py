"""`LabelledRun`: what the fine-tuning runs on labelled examples (`classify`,
`tag`) share: where their data comes from (`data.files`, a `data.dataset`
under `data.shared_dir`, or the embedded corpus' task), its check, and the
split of the examples."""

import glob
import os
import pathlib
import typing

from kobjectives.data import corpus_tasks
from kobjectives.data import labelled_pipelines as pipelines
from kobjectives.runs.run import Run


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
