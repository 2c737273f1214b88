"""Large data on a real Airflow 3.3 deployment: the example DAG ``oomless_chunked`` fans out over an
``oomless.data.plan`` with ``.expand()``, and its one large XCom goes to object storage through the
common.io ``XComObjectStorageBackend`` (a local ``file://`` folder here, s3:// in production) while the
small ones stay in the metadata database.

Results are checked against pandas over the whole file; the XCom rows are read from the deployment's
SQLite metadata database and the stored value from the object-storage folder.
"""

from __future__ import annotations

import configparser
import importlib.util
import json
import sqlite3
import sys
import time
from pathlib import Path

import fsspec
import pytest

pytest.importorskip("airflow.providers.celery", reason="Airflow 3.3 needs Python 3.11+ (the 'airflow' extra)")
pytest.importorskip("airflow.providers.common.io", reason="the object-storage XCom backend is in common.io")
pd = pytest.importorskip("pandas")

sys.path.insert(0, str(Path(__file__).parent))
from stack import EXAMPLE_DAGS, Stack, _kill_marked  # noqa: E402

from oomless.data import plan  # noqa: E402

DAG = "oomless_chunked"
EXAMPLE_CFG = EXAMPLE_DAGS.parent / "airflow.cfg"
THRESHOLD = 1 << 20  # the example config's: XCom values of 1 MiB of JSON or more go to object storage
LARGE = ("customer_totals", -1, "return_value")


def _example_xcom_settings(store: Path) -> dict[str, str]:
    """The example airflow.cfg's XCom settings as environment variables, with the store moved to ``store``."""
    cfg = configparser.ConfigParser()
    cfg.read(EXAMPLE_CFG)
    env = {"AIRFLOW__CORE__XCOM_BACKEND": cfg["core"]["xcom_backend"]}
    for option, value in cfg["common.io"].items():
        env[f"AIRFLOW__COMMON_IO__{option.upper()}"] = value
    env["AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_PATH"] = f"file://{store}"
    return env


def _chunk_memory() -> str:
    """The planner budget of the example DAG (its module constant)."""
    spec = importlib.util.spec_from_file_location("oomless_chunked_example", EXAMPLE_DAGS / f"{DAG}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CHUNK_MEMORY


@pytest.fixture(scope="module")
def run(tmp_path_factory, redis_url):
    home = tmp_path_factory.mktemp("airflow-data")
    store = home / "xcom-store"
    stack = Stack(
        home,
        redis_url,
        env={
            "AIRFLOW__OOMLESS__BUDGET": "3GiB",
            "AIRFLOW__OOMLESS__HISTORY": f"sqlite:///{home / 'oomless-history.sqlite'}",
            **_example_xcom_settings(store),
            "OOMLESS_DATA_DIR": str(home / "data"),
        },
    )
    try:
        stack.start()
        stack.wait_for("worker", "ready.", 120)
        stack.wait_dag(DAG)
        stack.run_id = stack.trigger(DAG)
        stack.run = stack.wait_run(DAG, stack.run_id, 240)
        stack.ti = stack.tis(DAG, stack.run_id)
        stack.store = store
        stack.db = home / "airflow.db"
        yield stack
    finally:
        stack.stop()
        assert _kill_marked(stack.marker) == [], "processes of the deployment survived its stop"


def _xcom(run, task_id: str, map_index: int = -1):
    """A return value as the DAG's tasks saw it, through the REST API (the raw value of its XCom row)."""
    entry = f"/dags/{DAG}/dagRuns/{run.run_id}/taskInstances/{task_id}/xcomEntries/return_value"
    got = run.api("GET", f"{entry}?map_index={map_index}")
    value = got["value"]
    return json.loads(value) if isinstance(value, str) and value[:1] in "[{" else value


def _rows(run) -> dict[tuple[str, int, str], tuple[int, str]]:
    """Every XCom row of the run in the metadata database: (task, map index, key) -> (bytes in the DB, value)."""
    with sqlite3.connect(f"file:{run.db}?mode=ro", uri=True) as db:
        got = db.execute(
            "SELECT task_id, map_index, key, length(CAST(value AS BLOB)), value FROM xcom"
            " WHERE dag_id = ? AND run_id = ?",
            (DAG, run.run_id),
        ).fetchall()
    return {(task, index, key): (size, value) for task, index, key, size, value in got}


def _stored_files(run) -> list[Path]:
    return sorted(p for p in run.store.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def orders(run):
    """The generated file, read whole with pandas: what every check compares with."""
    return pd.read_csv(_xcom(run, "orders_csv"))


def test_the_example_config_sets_options_the_installed_provider_reads():
    from airflow.providers.common.io.get_provider_info import get_provider_info
    from fsspec.utils import compressions

    known = get_provider_info()["config"]["common.io"]["options"]
    env = _example_xcom_settings(Path("/unused"))
    given = {k.removeprefix("AIRFLOW__COMMON_IO__").lower() for k in env if k.startswith("AIRFLOW__COMMON_IO__")}
    assert given <= set(known), given - set(known)
    assert env["AIRFLOW__CORE__XCOM_BACKEND"] == "airflow.providers.common.io.xcom.backend.XComObjectStorageBackend"
    assert int(env["AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_THRESHOLD"]) == THRESHOLD
    assert env["AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_COMPRESSION"] in compressions.values()


def test_the_run_succeeds_with_every_try_on_its_first_attempt(run):
    assert run.run["state"] == "success", run.ti
    got = run.api("GET", f"/dags/{DAG}/dagRuns/{run.run_id}/taskInstances")["task_instances"]
    assert {(t["state"], t["try_number"]) for t in got} == {("success", 1)}


def test_one_mapped_try_per_chunk_of_the_plan(run):
    path = _xcom(run, "orders_csv")
    expected = plan(path, memory=_chunk_memory())
    assert len(expected) > 1, "the file fits one chunk: the fan-out is not exercised"
    assert _xcom(run, "plan_chunks") == expected
    mapped = run.api("GET", f"/dags/{DAG}/dagRuns/{run.run_id}/taskInstances/region_totals/listMapped")
    assert sorted(t["map_index"] for t in mapped["task_instances"]) == list(range(len(expected)))


def test_the_combined_partials_equal_pandas_over_the_whole_file(run, orders):
    whole = orders.groupby("region").agg(orders=("amount", "size"), amount=("amount", "sum"), qty=("qty", "sum"))
    combined = _xcom(run, "combine")
    assert sorted(combined) == sorted(whole.index)
    for region, row in whole.iterrows():
        got = combined[region]
        assert (got["orders"], got["qty"]) == (row.orders, row.qty)
        assert got["amount"] == pytest.approx(row.amount, abs=0.01)


def test_the_large_value_is_a_file_in_object_storage_and_its_row_only_a_reference(run, orders):
    size, value = _rows(run)[LARGE]
    assert size < 1024, f"the row of customer_totals holds {size} bytes: the value was not offloaded"
    files = _stored_files(run)
    assert len(files) == 1, f"expected one file (customer_totals) in {run.store}, found {files}"
    path = files[0]
    assert json.loads(value) == f"file://{path}"
    with fsspec.open(str(path), "rt", compression="infer") as f:
        table = json.load(f)
    assert len(json.dumps(table).encode()) >= THRESHOLD
    whole = orders.groupby("customer").agg(orders=("amount", "size"), amount=("amount", "sum"))
    assert table["customer"] == whole.index.tolist()
    assert table["orders"] == whole["orders"].tolist()
    assert table["amount"] == pytest.approx(whole["amount"].tolist(), abs=0.01)


def test_the_downstream_task_reads_the_large_value_back_from_storage(run, orders):
    totals = orders.groupby("customer")["amount"].sum().round(2)
    top = sorted(totals.items(), key=lambda r: (-r[1], r[0]))[:5]
    got = _xcom(run, "top_customers")
    assert got["customers"] == len(totals)
    assert [c for c, _ in got["top"]] == [c for c, _ in top]


def test_small_values_stay_in_the_database(run):
    rows = _rows(run)
    assert {key for _, _, key in rows} == {"return_value"}, "a task pushed more than its return value"
    small = {key: row for key, row in rows.items() if key != LARGE}
    assert {task for task, _, _ in small} == {"orders_csv", "plan_chunks", "region_totals", "combine", "top_customers"}
    for (task, index, _), (size, value) in small.items():
        assert size < THRESHOLD and str(run.store) not in value, (task, index, size, value[:200])
    assert all(p.relative_to(run.store).parts[2] == "customer_totals" for p in _stored_files(run))


def test_every_chunk_try_was_recorded_within_its_declared_memory(run):
    """The history holds one try per chunk, each under the 256 MiB it declared; prints the figures
    docs/airflow.md quotes (run with -s to see them)."""
    rows = _rows(run)
    files = _stored_files(run)
    data = Path(_xcom(run, "orders_csv"))
    raw = None
    if files:
        with fsspec.open(str(files[0]), "rb", compression="infer") as f:
            raw = len(f.read())
    figures = {
        "run": [run.run["start_date"], run.run["end_date"]],
        "csv_bytes": data.stat().st_size,
        "chunks": len(_xcom(run, "plan_chunks")),
        "large_json_bytes": raw,
        "large_file_bytes": files[0].stat().st_size if files else None,
        "large_db_row_bytes": rows[LARGE][0],
        "small_db_row_bytes": {f"{t}[{i}]" if i >= 0 else t: s for (t, i, _), (s, _) in sorted(rows.items())},
    }
    from oomless.history.store import Store

    # A try's Celery task ends a moment after Airflow marks the try done (the supervisor finishes up),
    # and the worker writes its record after that, in a batch: wait for every chunk's record.
    deadline = time.monotonic() + 60
    while True:
        attempts = [a for a in Store(run.env["AIRFLOW__OOMLESS__HISTORY"]).attempts() if a.run_id == run.run_id]
        seen = {a.map_index for a in attempts if a.af_task_id == "region_totals"}
        if len(seen) >= figures["chunks"] or time.monotonic() > deadline:
            break
        time.sleep(1)
    figures["peak_mib"] = {
        f"{a.af_task_id}[{a.map_index}]" if a.map_index >= 0 else a.af_task_id: round(a.peak_rss / 2**20, 1)
        for a in attempts
    }
    chunk_tries = [a for a in attempts if a.af_task_id == "region_totals"]
    assert sorted(a.map_index for a in chunk_tries) == list(range(figures["chunks"]))
    assert all(a.outcome == "ok" and 0 < a.peak_rss <= 256 * 2**20 for a in chunk_tries), figures["peak_mib"]
    print("\noomless_chunked figures:", json.dumps(figures, indent=1))
