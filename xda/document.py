"""The JSON document ``dabench xda`` writes: one typed shape (:class:`XDADocument`), one builder.

:func:`build_document` turns the facts of one XDA run (task, method, data, model, the explained test
point, the :class:`~xda.results.XDAResult`) into the document; git commit, environment, machine
and time are added here (:mod:`harness.records`). The figure (:mod:`paper_figures.xda_figure`) is
drawn from this document and the arrays of :meth:`~xda.results.XDAResult.to_arrays` alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from harness.records import GitInfo, MachineInfo, environment, git_info, machine, utc_now
from xda.results import XDARecord

if TYPE_CHECKING:
    from harness.protocols import Method, Task, TaskData
    from xda.results import XDAResult

#: Version of :class:`XDADocument`; raise it when a key changes meaning or goes away.
XDA_SCHEMA_VERSION = 1
#: The document's ``kind`` (a run record has none).
XDA_KIND: Literal["xda"] = "xda"


class ModelFacts(TypedDict):
    """The model explained: its cache key, whether it came from the cache, its test accuracy."""

    key: str
    cached: bool
    test_accuracy: float


class TaskFacts(TypedDict):
    name: str
    version: str
    variant: str
    config: dict[str, Any]
    n_train: int
    n_test: int
    seed: int
    model: ModelFacts


class MethodFacts(TypedDict):
    name: str
    version: str
    config: dict[str, Any]
    config_hash: str


class ExplainedPoint(TypedDict):
    """The test point explained: its position in the test split, label and prediction."""

    index: int
    true_label: int
    prediction: int
    correct: bool


#: The shortcut of the mark variant: its class, and whether the explained point went through it.
Shortcut = TypedDict("Shortcut", {"class": int, "predicted_as_shortcut": bool, "true_label_differs": bool})


class FileNames(TypedDict):
    """Names (no folder) of the files written beside the document."""

    json: str
    arrays: str
    png: str
    pdf: str


class XDADocument(TypedDict):
    """Everything ``dabench xda`` records about one explained test point."""

    kind: Literal["xda"]
    schema_version: int
    created_utc: str
    task: TaskFacts
    method: MethodFacts
    test: ExplainedPoint
    #: proponents and opponents asked for, each
    top: int
    #: None outside the mark variant
    shortcut: Shortcut | None
    xda: XDARecord
    files: FileNames
    git: GitInfo
    environment: dict[str, Any]
    machine: MachineInfo  #: as in a run record: a stable id of the host, and its name


def build_document(
    result: XDAResult,
    *,
    task: Task,
    method: Method,
    data: TaskData,
    seed: int,
    model_info: Mapping[str, Any],
    test_accuracy: float,
    test_index: int,
    top: int,
    shortcut: int | None,
    files: FileNames,
) -> XDADocument:
    """The document of one XDA run.

    Parameters
    ----------
    result:
        The XDA of the test point at ``test_index`` of ``data.test``.
    task, method:
        The task the data came from and the fitted method.
    data:
        The task's data; on the mark variant its ``train.meta["marked"]`` flags are copied into the
        pairs (``train_marked``).
    seed:
        The model's seed.
    model_info:
        :func:`harness.model_store.get_or_train_model`'s facts (``key``, ``cached``).
    test_accuracy:
        The model's accuracy on ``data.test``.
    test_index, top:
        The test point explained; the proponents and opponents asked for, each.
    shortcut:
        The shortcut class of the mark variant (None elsewhere).
    files:
        Names of the files written beside the document.
    """
    true_label = int(data.test.y[test_index])
    xda_record = result.to_record()
    if shortcut is not None:
        marked = data.train.meta["marked"]
        for pair in (*xda_record["proponents"], *xda_record["opponents"]):
            pair["train_marked"] = bool(marked[pair["train_index"]])
    git = git_info()
    host = machine()
    return {
        "kind": XDA_KIND,
        "schema_version": XDA_SCHEMA_VERSION,
        "created_utc": utc_now(),
        "task": {
            "name": task.name,
            "version": task.version,
            "variant": data.variant,
            "config": task.config.to_dict(),
            "n_train": len(data.train),
            "n_test": len(data.test),
            "seed": seed,
            "model": {
                "key": model_info["key"],
                "cached": model_info["cached"],
                "test_accuracy": test_accuracy,
            },
        },
        "method": {
            "name": method.name,
            "version": method.version,
            "config": method.config.to_dict(),
            "config_hash": method.config.config_hash(),
        },
        "test": {
            "index": test_index,
            "true_label": true_label,
            "prediction": result.prediction,
            "correct": result.prediction == true_label,
        },
        "top": top,
        "shortcut": (
            None
            if shortcut is None
            else {
                "class": shortcut,
                "predicted_as_shortcut": result.prediction == shortcut,
                "true_label_differs": true_label != shortcut,
            }
        ),
        "xda": xda_record,
        "files": files,
        "git": {"commit": git["commit"], "dirty": git["dirty"]},
        "environment": environment(),
        "machine": {"id": host["id"], "hostname": host["hostname"]},
    }
