"""Each setting is declared once (oomless.settings); README, the docs and Airflow's provider agree with it."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest

from oomless.airflow.provider import get_provider_info
from oomless.celery.config import load_settings
from oomless.errors import InvalidConfiguration
from oomless.linux.cgroup.host import CgroupHost
from oomless.settings import BY_NAME, SETTINGS

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| `(oomless_[a-z_]+)` \| (.*?) \| (.*) \|$")
NO_CGROUP = CgroupHost(version=None, path=None, limit=None, writable=False, reason="test")


def _rows(path: Path) -> dict[str, tuple[str, str]]:
    """The rows of the page's tables of Celery keys (headed ``| key | default |`` or ``| Celery config key |``)."""
    rows, inside = {}, False
    for line in path.read_text().splitlines():
        if line.startswith(("| key | default |", "| Celery config key | default |")):
            inside = True
        elif not line.startswith("|"):
            inside = False
        elif inside and (m := ROW.match(line)):
            rows[m.group(1)] = (m.group(2), m.group(3))
    return rows


def test_readmes_configuration_table_is_the_declared_settings():
    rows = _rows(ROOT / "README.md")
    expected = {s.key: (s.shown, s.doc) for s in SETTINGS}
    for key in sorted(set(rows) | set(expected)):
        assert rows.get(key) == expected.get(key), (
            f"README.md's row for {key} differs from oomless/settings.py; the declared one reads:\n"
            f"| `{key}` | {expected[key][0]} | {expected[key][1]} |" if key in expected
            else f"README.md documents {key}, which oomless/settings.py does not declare"
        )


@pytest.mark.parametrize("page", sorted((ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_every_setting_a_docs_table_names_exists_with_its_declared_default(page):
    for key, (shown, _) in _rows(page).items():
        setting = BY_NAME.get(key.removeprefix("oomless_"))
        assert setting is not None, f"{page.name} documents {key}, which is not a setting"
        assert shown == setting.shown, f"{page.name} gives {key} the default {shown}, declared: {setting.shown}"


def test_every_option_docs_airflow_md_lists_is_an_airflow_setting():
    names, inside = [], False
    for line in (ROOT / "docs" / "airflow.md").read_text().splitlines():
        if line.startswith("| option | default |"):
            inside = True
        elif not line.startswith("|"):
            inside = False
        elif inside and not line.startswith("|---"):
            names += re.findall(r"`([a-z_]+)`", line.split("|")[1])
    assert names, "docs/airflow.md has no table of [oomless] options"
    assert [n for n in names if n not in BY_NAME or not BY_NAME[n].airflow] == []


def test_airflows_oomless_section_lists_the_declared_settings_with_their_defaults():
    options = get_provider_info()["config"]["oomless"]["options"]
    declared = {s.name: s for s in SETTINGS if s.airflow}
    assert set(options) == set(declared)
    for name, option in options.items():
        setting = declared[name]
        assert option["type"] == setting.kind
        assert option["default"] == (None if setting.default is None else str(setting.default))
        if option["default"] is not None:  # Airflow hands the default over as text: it must parse
            setting.parse(option["default"], setting.key)


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_every_declared_default_and_example_parses(setting):
    if setting.default is not None:
        setting.parse(setting.default, setting.key)
    if setting.example is not None:
        setting.parse(setting.example, setting.key)


@pytest.mark.parametrize("value, seconds", [(45, 45.0), ("5ms", 0.005), ("7d", 604800.0), ("2.5", 2.5),
                                            (timedelta(minutes=2), 120.0), ("0", 0.0)])
def test_durations_take_numbers_units_and_timedeltas(value, seconds):
    settings = load_settings({"oomless_backfill_window": value}, NO_CGROUP)
    assert settings.backfill_window == seconds


@pytest.mark.parametrize("key, value, words", [
    ("oomless_backfill_window", "soon", "is not a duration"),
    ("oomless_give_back_after", -1, "is outside 0 s"),
    ("oomless_max_waiting", "many", "is not a whole number"),
    ("oomless_admission", "perhaps", "is not a yes/no value"),
    ("oomless_eviction_margin", "lots", "is not a size"),
    ("oomless_metrics_port", 70000, "is not a TCP port"),
    ("oomless_poll_interval", 5, "is outside 0.0005–1 s"),
    ("oomless_budget", "lots", "is not a size"),
    ("oomless_reserve", "some", "is not a size"),
    ("oomless_default_memory", "lots", "not a size"),
    ("oomless_history", "typo", "is not understood"),
])
def test_a_value_that_cannot_be_used_is_refused_naming_its_key(key, value, words):
    with pytest.raises(InvalidConfiguration) as caught:
        load_settings({key: value}, NO_CGROUP)
    assert caught.value.key == key
    assert words in str(caught.value) and key in str(caught.value)
    assert isinstance(caught.value, ValueError)  # callers that caught ValueError still do


def test_learned_sizes_without_a_history_name_the_key():
    with pytest.raises(InvalidConfiguration, match="needs the history it learns from") as caught:
        load_settings({"oomless_learned": True}, NO_CGROUP)
    assert caught.value.key == "oomless_learned"


@pytest.mark.parametrize("conf, key, value", [
    ({"oomless_backfill_window": False}, "backfill_window", 0.0),  # a number, as before the table
    ({"oomless_give_back_after": "5e-3"}, "give_back_after", 0.005),
    ({"oomless_backfill_window": ""}, "backfill_window", 60.0),  # Airflow's unset option: the default
])
def test_values_the_worker_always_took_still_mean_what_they_meant(conf, key, value):
    assert getattr(load_settings(conf, NO_CGROUP), key) == value


def test_stored_data_may_be_kept_longer_than_any_wait():
    from oomless.settings import read

    assert read({"oomless_offload_ttl": timedelta(days=365)}, "offload_ttl") == 365 * 86400.0
    assert read({"oomless_offload_threshold": 0}, "offload_threshold") == 2**20  # 0: the default
    assert read({"oomless_offload_ttl": 0}, "offload_ttl") == 604800.0
    with pytest.raises(InvalidConfiguration, match="outside"):
        read({"oomless_backfill_window": "200d"}, "backfill_window")


def test_a_path_names_the_claim_store(tmp_path):
    from oomless.settings import read

    assert read({"oomless_offload": tmp_path}, "offload") == str(tmp_path)


def test_the_reserve_counts_only_for_an_auto_budget_and_is_refused_by_its_own_name():
    assert load_settings({"oomless_budget": "1GiB", "oomless_reserve": "some"}, NO_CGROUP).budget.bytes == 2**30
    with pytest.raises(InvalidConfiguration) as caught:
        load_settings({"oomless_reserve": "some"}, NO_CGROUP)
    assert caught.value.key == "oomless_reserve"
