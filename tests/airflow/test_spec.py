"""What a DAG declares, what each try gets, and what the try's log says (pure; no Airflow needed)."""

from __future__ import annotations

import pytest

from oomless import InfeasibleMemoryRequest, InvalidMemorySpec, Memory
from oomless.airflow import memory
from oomless.airflow.messages import evicted, infeasible, killed
from oomless.airflow.spec import TaskMemory, TryInfo

MiB, GiB = 2**20, 2**30


def test_memory_returns_an_executor_config_that_merges_with_other_keys():
    config = {**memory("2GiB", escalate=2, max="16GiB"), "pod_override": {"x": 1}}
    assert config == {
        "oomless": {"request": 2 * GiB, "limit": 2 * GiB, "escalate": 2.0, "max": 16 * GiB},
        "pod_override": {"x": 1},
    }


@pytest.mark.parametrize("bad", [
    dict(memory="2 gigs"), dict(memory="2GiB", escalate=1), dict(memory="2GiB", max="1GiB"),
    dict(escalate=2), dict(memory="1GiB", request="1GiB"), dict(memory="1GiB", default="2GiB"),
    dict(memory="auto", default="lots"),
])
def test_memory_validates_at_dag_definition(bad):
    with pytest.raises(InvalidMemorySpec):
        memory(**bad)


def test_auto_asks_for_the_learned_size_with_a_default_and_may_escalate_it():
    config = memory("auto", default="256MiB", escalate=2, max="4GiB")
    assert config == {"oomless": {"request": 256 * MiB, "limit": 256 * MiB, "auto": True, "escalate": 2.0,
                                  "max": 4 * GiB}}
    assert TaskMemory.from_config(config) == TaskMemory(Memory(256 * MiB, 256 * MiB), 2.0, 4 * GiB, auto=True)
    assert TaskMemory.from_config(memory("auto")) == TaskMemory(Memory(), auto=True)
    # the hand-written form
    assert TaskMemory.from_config({"oomless": {"memory": "auto"}}) == TaskMemory(Memory(), auto=True)


def test_a_learned_trys_kill_sentence_says_the_retry_is_sized_again_with_the_kill():
    info = TryInfo(1, 1, 0, TaskMemory(Memory(115 * MiB, 120 * MiB), auto=True), source="memory … learned")
    assert TryInfo.from_header(info.to_header()) == info
    text = killed(info, 120 * MiB, 130 * MiB)
    assert text.endswith("The next try (try 2) is sized from the history again, which counts this kill: a limit "
                         "of at least 264.0 MiB.")


def test_a_hand_written_config_with_strings_is_read():
    assert TaskMemory.from_config({"oomless": {"memory": "4GiB"}}) == TaskMemory(Memory.coerce("4GiB"))
    assert TaskMemory.from_config({"oomless": {"request": "1GiB", "limit": "3GiB"}}).base == Memory(GiB, 3 * GiB)


def test_configs_without_the_key_are_not_ours():
    assert TaskMemory.from_config(None) is None
    assert TaskMemory.from_config({"KubernetesExecutor": {}}) is None


@pytest.mark.parametrize("bad", [
    {"oomless": "2GiB"}, {"oomless": {"memroy": "2GiB"}},
    {"oomless": {"memory": "2GiB", "limit": "3GiB"}}, {"oomless": {"memory": -1}},
])
def test_a_malformed_config_is_refused_with_the_value_named(bad):
    with pytest.raises(InvalidMemorySpec) as caught:
        TaskMemory.from_config(bad)
    assert "oomless" in str(caught.value) or "-1" in str(caught.value)


def test_each_memory_killed_try_multiplies_request_and_limit_up_to_max():
    spec = TaskMemory.make(Memory(request="1GiB", limit="2GiB"), 2, "5GiB")
    assert spec.for_try(0) == Memory(GiB, 2 * GiB)
    assert spec.for_try(1) == Memory(2 * GiB, 4 * GiB)
    assert spec.for_try(2) == Memory(4 * GiB, 5 * GiB)
    assert spec.for_try(50) == Memory(5 * GiB, 5 * GiB)


def test_without_escalate_every_try_gets_the_declared_memory():
    assert TaskMemory(Memory.coerce("1GiB")).for_try(3) == Memory.coerce("1GiB")


def test_try_info_from_an_untrusted_header_is_none_when_odd():
    good = TryInfo(2, 3, 1, TaskMemory.make(Memory.coerce("1GiB"), 2, "8GiB"))
    assert TryInfo.from_header(good.to_header()) == good
    for bad in (None, "x", {"try": True, "max_tries": 1, "memory_killed": 0, "declared": {}},
                {**good.to_header(), "try": -1}, {**good.to_header(), "declared": {"limit": "lots"}}):
        assert TryInfo.from_header(bad) is None


def test_the_kill_sentence_says_limit_peak_and_what_the_next_try_gets():
    info = TryInfo(1, 2, 0, TaskMemory.make(Memory.coerce("240MiB"), 2, "4GiB"))
    text = killed(info, 240 * MiB, 240 * MiB)
    assert "exceeded its memory limit of 240.0 MiB (peak 240.0 MiB)" in text
    assert "The next try (try 2) gets a limit of 480.0 MiB (× 2 per memory-killed try)." in text


def test_the_kill_sentence_says_when_no_retry_is_left():
    info = TryInfo(3, 2, 2, TaskMemory.make(Memory.coerce("1GiB"), 2))
    assert "No retry is left (try 3 of 3)" in killed(info, 4 * GiB, 4 * GiB)


def test_the_kill_sentence_says_when_the_cap_stops_escalation():
    first = TryInfo(1, 3, 0, TaskMemory.make(Memory.coerce("3GiB"), 2, "4GiB"))
    assert "a limit of 4.0 GiB (× 2 per memory-killed try, capped at max=4.0 GiB)" in killed(first, 3 * GiB, 3 * GiB)
    second = TryInfo(2, 3, 1, TaskMemory.make(Memory.coerce("3GiB"), 2, "4GiB"))
    assert "gets the same limit of 4.0 GiB" in killed(second, 4 * GiB, 4 * GiB)


def test_the_kill_sentence_without_escalation_suggests_it():
    info = TryInfo(1, 1, 0, TaskMemory(Memory.coerce("1GiB")))
    assert "same limit of 1.0 GiB: no escalation is set" in killed(info, GiB, GiB)


def test_eviction_and_infeasible_sentences():
    assert "does not get more memory" in evicted(None, 600 * MiB, 300 * MiB, "its tasks use 1.0 GiB")
    too_big = infeasible(InfeasibleMemoryRequest("execute_workload", "x", 64 * 2**40, 3 * 2**30))
    assert too_big.startswith("oomless: this try did not run: it asks for a memory limit of 64.0 TiB, more than "
                              "this worker's whole budget of 3.0 GiB, so it can never run here; it fails without")
    assert "executor_config" in too_big and "[oomless] budget" in too_big and "oomless_budget" not in too_big
    assert infeasible(InvalidMemorySpec("'lots' is not a size")) == \
        "oomless: this try did not run: 'lots' is not a size; it fails without retries."


def test_a_malformed_hand_written_spec_is_a_dag_import_error_naming_the_task_and_value(tmp_path, monkeypatch):
    """oomless's cluster policy (the airflow.policy entry point) runs wherever Airflow parses DAGs."""
    pytest.importorskip("airflow.dag_processing.dagbag", reason="Airflow 3.3 needs Python 3.11+")
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "home"))
    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "memory.py").write_text(
        "from datetime import datetime\n"
        "from airflow.sdk import dag, task\n"
        "@dag(schedule=None, start_date=datetime(2026, 1, 1))\n"
        "def bad_memory():\n"
        "    @task(executor_config={'oomless': {'memory': 'lots'}})\n"
        "    def load(): pass\n"
        "    load()\n"
        "bad_memory()\n"
    )
    (tmp_path / "good").mkdir()
    (tmp_path / "good" / "memory.py").write_text(
        (tmp_path / "dags" / "memory.py").read_text().replace("'lots'", "'2GiB'").replace("bad_", "good_")
    )
    from airflow.dag_processing.dagbag import DagBag

    bad = DagBag(str(tmp_path / "dags"))
    [error] = bad.import_errors.values()
    assert "AirflowClusterPolicyViolation: task 'load': " in error
    assert "['memory'] 'lots' is not a size" in error
    assert not bad.dags
    assert list(DagBag(str(tmp_path / "good")).dags) == ["good_memory"]


def test_memory_warns_at_parse_time_when_a_limit_is_below_what_any_try_costs():
    with pytest.warns(UserWarning, match=r"a memory limit of 16.0 MiB is below the 64.0 MiB an Airflow try is "
                                         r"charged before the task's code runs"):
        memory("16MiB")
    with pytest.warns(UserWarning, match="29.0 MiB"):
        memory(request="8MiB", limit="29MiB")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        memory("64MiB"), memory("2GiB"), memory("auto"), memory(request="16MiB")  # no limit: nothing to warn of
