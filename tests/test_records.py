"""The run record (schema 2): its keys are the TypedDicts', version 1 is read through a migration,
a record names the machine and commit that wrote it, and a rerun adds a record instead of
overwriting one (loaders take the latest per run)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, get_type_hints

import pytest

from harness import records
from harness.grid import run_grid
from harness.runner import ComponentSpec, RunSpec, TimingConfig, run_one
from harness.runs import load_runs

PROJECT = Path(__file__).resolve().parent.parent
REFERENCE = PROJECT / "results" / "reference" / "default" / "records"


def _spec(tmp_path: Path, method: str = "random") -> RunSpec:
    return RunSpec(
        task=ComponentSpec("toy"),
        method=ComponentSpec.parse(method),
        metrics=(ComponentSpec("class_detection"), ComponentSpec("sparsity")),
        results_dir=str(tmp_path / "results"),
        cache_dir=str(tmp_path / "cache"),
        timing=TimingConfig(repeats=1, batch_size=8),
    )


def _keys(typed: type) -> set[str]:
    return set(get_type_hints(typed))


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> records.Record:
    made = run_one(_spec(tmp_path_factory.mktemp("record"), "feature_similarity"))
    assert made["status"] == "ok", made["error"]
    return made


def test_a_written_record_has_exactly_the_keys_of_its_typed_schema(record: records.Record) -> None:
    """The documented schema is the TypedDicts; this fails when the runner writes a key they lack."""
    assert set(record) == _keys(records.Record)
    assert set(record["method"]) == _keys(records.MethodSection)
    assert set(record["task"]) == _keys(records.TaskSection)
    assert record["task"]["model"] is not None
    assert set(record["task"]["model"]) == _keys(records.ModelInfo)
    for entry in record["metrics"].values():
        assert set(entry) == _keys(records.MetricEntry)
    assert set(record["timings"]) == _keys(records.Timings)
    assert set(record["timings"]["fit"]) == _keys(records.FitTimings)
    assert set(record["timings"]["explain"]) == _keys(records.ExplainTimings)
    for reading in record["memory"].values():
        assert set(reading) == _keys(records.MemoryReading)
    assert record["sparsity"] is not None and set(record["sparsity"]) == _keys(records.Sparsity)
    assert set(record["git"]) == _keys(records.GitInfo)
    assert set(record["machine"]) == _keys(records.MachineInfo)


def test_a_failed_record_has_the_same_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.runner

    def broken(*args: Any) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(harness.runner, "set_up", broken)
    failed = run_one(_spec(tmp_path))
    assert failed["status"] == "failed" and set(failed) == _keys(records.Record)
    assert failed["error"] is not None and set(failed["error"]) == _keys(records.ErrorInfo)
    assert failed["error"]["message"] == "disk gone" and "OSError" in failed["error"]["traceback"]
    assert set(failed["task"]) == _keys(records.TaskSection)
    records.validate(failed)


def test_the_record_id_names_the_run_the_time_the_machine_and_the_commit(record: records.Record) -> None:
    machine = records.machine()
    assert machine == records.machine() and len(machine["id"] or "") == 12
    assert record["machine"] == machine and record["schema_version"] == records.SCHEMA_VERSION == 2
    run_id, stamp, machine_id, commit = record["record_id"].split("-")
    assert run_id == record["run_id"] and machine_id == machine["id"]
    assert stamp.startswith(record["created_utc"][:10].replace("-", "")) and stamp.endswith("Z")
    assert commit == (record["git"]["commit"] or "nogit")[:10]


def test_a_record_is_written_once(record: records.Record, tmp_path: Path) -> None:
    path = records.write_record(record, tmp_path)
    assert path.name == f"{record['record_id']}.json"
    before = path.read_text()
    with pytest.raises(FileExistsError, match="written once"):
        records.write_record({**record, "status": "failed"}, tmp_path)
    assert path.read_text() == before
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary is gone either way


def test_version_1_records_are_read_through_the_migration() -> None:
    path = sorted(REFERENCE.glob("*.json"))[0]
    raw = json.loads(path.read_text())
    assert raw["schema_version"] == 1 and "record_id" not in raw and "machine" not in raw
    upgraded = records.read_record(path)
    assert upgraded["schema_version"] == 2
    assert upgraded["record_id"] == f"{raw['run_id']}-v1"
    assert upgraded["machine"] == {"id": None, "hostname": None}
    # everything version 1 had is kept as it was
    assert {k: upgraded[k] for k in raw if k != "schema_version"} == {
        k: v for k, v in raw.items() if k != "schema_version"
    }


def test_version_1_without_later_keys_gets_their_defaults() -> None:
    raw = json.loads(sorted(REFERENCE.glob("*.json"))[0].read_text())
    raw.pop("explanation_error")
    del raw["task"]["n_explained"]
    for entry in raw["metrics"].values():
        del entry["per_point"]
    upgraded = records.upgrade(raw)
    assert upgraded["explanation_error"] is None
    assert upgraded["task"]["n_explained"] == raw["task"]["n_test"]
    assert all(entry["per_point"] is None for entry in upgraded["metrics"].values())


@pytest.mark.parametrize("version", [0, 3, None, "2"])
def test_an_unknown_schema_version_is_named(version: Any) -> None:
    with pytest.raises(records.RecordError, match="schema version"):
        records.upgrade({"schema_version": version, "run_id": "x"}, where="r.json")


def test_a_rerun_adds_a_record_and_the_loaders_take_the_latest(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "random")
    first = run_grid([spec], progress=False)
    second = run_grid([spec], progress=False)
    assert len(first.written) == 1 and len(second.skipped) == 1 and not second.written
    forced = run_grid([spec], force=True, progress=False)
    assert len(forced.written) == 1 and forced.written[0] != first.written[0]
    assert first.written[0].exists()  # the history is kept

    folder = tmp_path / "results" / "records"
    latest, unreadable = records.scan_records(folder)
    everything, _ = records.scan_records(folder, history=True)
    assert not unreadable and len(everything) == 2 and len(latest) == 1
    newest = records.read_record(forced.written[0])
    assert latest[0]["record_id"] == newest["record_id"]
    assert records.latest_record(folder, newest["run_id"]) == newest
    runs = load_runs(folder)
    assert len(runs.frame) == 1 and runs.records[0]["record_id"] == newest["record_id"]


def test_the_latest_is_by_creation_time_across_versions(tmp_path: Path) -> None:
    source = sorted(REFERENCE.glob("*.json"))[0]
    shutil.copy(source, tmp_path / source.name)
    old = records.read_record(source)
    newer = {**old, "record_id": f"{old['run_id']}-later", "created_utc": "2030-01-01T00:00:00.000000+00:00"}
    records.write_record(newer, tmp_path)
    assert records.latest_record(tmp_path, old["run_id"])["record_id"] == newer["record_id"]
    assert records.latest_per_run([newer, old]) == records.latest_per_run([old, newer]) == [newer]
