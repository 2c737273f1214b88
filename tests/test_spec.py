"""Memory specs: what a task declares, how a broker header is decoded, which spec applies."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oomless import InvalidMemorySpec, Memory
from oomless.spec import HEADER, NO_SPEC, from_header, resolve
from oomless.units import MAX_SIZE

MiB = 2**20
GiB = 2**30

# --- Memory ---------------------------------------------------------------


def test_memory_parses_request_and_limit_strings_to_bytes():
    spec = Memory(request="512MiB", limit="2GiB")
    assert (spec.request, spec.limit) == (512 * MiB, 2 * GiB)


def test_memory_with_only_a_limit_requests_its_limit():
    assert Memory(limit="1GiB").request == GiB


def test_memory_with_only_a_request_has_no_limit():
    spec = Memory(request="1GiB")
    assert (spec.request, spec.limit) == (GiB, None)


def test_memory_with_nothing_set_is_no_spec():
    assert Memory() == NO_SPEC
    assert (NO_SPEC.request, NO_SPEC.limit) == (None, None)


def test_memory_request_equal_to_limit_is_allowed():
    assert Memory(request=GiB, limit=GiB).limit == GiB


def test_memory_request_above_limit_raises_with_both_sizes():
    with pytest.raises(InvalidMemorySpec, match=r"request 2\.0 GiB is larger than the limit 1\.0 GiB"):
        Memory(request="2GiB", limit="1GiB")


def test_memory_bad_limit_raises_invalid_memory_spec_naming_it():
    with pytest.raises(InvalidMemorySpec, match=r"memory limit 'lots' is not a size"):
        Memory(limit="lots")


def test_memory_bad_request_raises_invalid_memory_spec_naming_it():
    with pytest.raises(InvalidMemorySpec, match=r"memory request must be more than 0 bytes"):
        Memory(request=0)


def test_invalid_memory_spec_is_a_value_error():
    with pytest.raises(ValueError):
        Memory(limit=-1)


def test_memory_is_immutable():
    spec = Memory(limit=GiB)
    with pytest.raises(AttributeError):
        spec.limit = 2 * GiB  # type: ignore[misc]


def test_equal_specs_are_equal_and_hash_alike():
    assert Memory(limit="1GiB") == Memory(request=GiB, limit=GiB)
    assert hash(Memory(limit="1GiB")) == hash(Memory(request=GiB, limit=GiB))


def test_str_of_request_equal_to_limit_is_one_size():
    assert str(Memory(limit="2GiB")) == "2.0 GiB"


def test_str_of_request_below_limit_names_both():
    assert str(Memory(request="1GiB", limit="2GiB")) == "request 1.0 GiB, limit 2.0 GiB"


# --- Memory.coerce -----------------------------------------------------------


def test_coerce_none_is_none():
    assert Memory.coerce(None) is None


def test_coerce_returns_a_memory_unchanged():
    spec = Memory(limit=GiB)
    assert Memory.coerce(spec) is spec


def test_coerce_a_size_string_sets_request_and_limit():
    assert Memory.coerce("2GiB") == Memory(request=2 * GiB, limit=2 * GiB)


def test_coerce_an_int_is_bytes():
    assert Memory.coerce(1024) == Memory(limit=1024)


def test_coerce_a_mapping_reads_request_and_limit():
    assert Memory.coerce({"request": "1GiB", "limit": "2GiB"}) == Memory(request=GiB, limit=2 * GiB)


def test_coerce_a_mapping_with_unknown_keys_names_them():
    with pytest.raises(InvalidMemorySpec, match=r"unknown keys \['limt'\]; use 'request' and/or 'limit'"):
        Memory.coerce({"limt": "1GiB"})


def test_coerce_names_the_option_in_errors():
    with pytest.raises(InvalidMemorySpec, match=r"^memory= of etl\.load 'big' is not a size"):
        Memory.coerce("big", what="memory= of etl.load")


def test_coerce_rejects_a_float():
    with pytest.raises(InvalidMemorySpec, match=r"\(float\)"):
        Memory.coerce(1.5)


# --- from_header: untrusted broker input ---------------------------------------


def test_header_none_means_no_per_call_spec():
    assert from_header(None) is None


def test_header_size_string_is_decoded():
    assert from_header("512MiB") == Memory(limit=512 * MiB)


def test_header_int_is_decoded():
    assert from_header(4096) == Memory(limit=4096)


def test_header_mapping_is_decoded():
    assert from_header({"request": 1024, "limit": 2048}) == Memory(request=1024, limit=2048)


def test_header_mapping_with_null_limit_is_request_only():
    assert from_header({"request": 1024, "limit": None}) == Memory(request=1024)


@pytest.mark.parametrize(
    "raw",
    [
        True,
        False,
        1.5,
        [],
        ["2GiB"],
        [1024, 2048],
        ("2GiB",),
        b"2GiB",
        {"request": 1, "limit": 2, "extra": 3},
    ],
)
def test_header_that_is_not_a_size_or_small_mapping_is_invalid(raw):
    with pytest.raises(InvalidMemorySpec, match=rf"message header {HEADER}=.* is not a memory spec"):
        from_header(raw)


@pytest.mark.parametrize(
    "raw",
    [
        {"limit": {"bytes": 1024}},
        {"limit": [1024]},
        {"request": {"request": {"limit": 1}}},
        {"limit": True},
        {"limit": 1.5},
        {"limit": -1},
        {"limit": "1e9"},
        {"bogus": 1},
        {1: 2},
        "",
        "lots",
        0,
        -4096,
        2**70,
    ],
)
def test_header_with_bad_contents_is_invalid(raw):
    with pytest.raises(InvalidMemorySpec):
        from_header(raw)


def test_header_with_request_above_limit_is_invalid():
    with pytest.raises(InvalidMemorySpec, match="larger than the limit"):
        from_header({"request": 2 * GiB, "limit": GiB})


def test_header_error_names_the_header():
    with pytest.raises(InvalidMemorySpec, match=rf"message header {HEADER} 'lots' is not a size"):
        from_header("lots")


@pytest.mark.parametrize(
    "raw",
    [
        "9" * 10_000_000,
        ["x" * 10_000_000],
        {"limit": "x" * 10_000_000},
        {"limit": ["x" * 10_000_000]},
        {"x" * 10_000_000: 1},
        {"bogus": "x" * 10_000_000},
        {"limit": {"x": "y" * 10_000_000}},
        list(range(1_000_000)),
    ],
    ids=["str", "list", "limit-str", "limit-list", "key", "unknown-key-value", "nested-dict", "long-list"],
)
def test_header_error_for_huge_input_stays_short(raw):
    with pytest.raises(InvalidMemorySpec) as info:
        from_header(raw)
    assert len(str(info.value)) < 500


def test_header_deeply_nested_list_is_invalid_not_recursion_error():
    raw: list = []
    for _ in range(100_000):
        raw = [raw]
    with pytest.raises(InvalidMemorySpec):
        from_header(raw)


def test_header_deeply_nested_limit_is_invalid_not_recursion_error():
    raw: dict = {}
    for _ in range(100_000):
        raw = {"limit": raw}
    with pytest.raises(InvalidMemorySpec):
        from_header(raw)


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
    | st.sampled_from(["request", "limit", "2GiB", "512MiB", "1.5G", "0", "-1"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text() | st.sampled_from(["request", "limit"]), children, max_size=4)
    ),
    max_leaves=20,
)


@given(_json)
def test_header_decoding_raises_only_invalid_memory_spec(raw):
    try:
        spec = from_header(raw)
    except InvalidMemorySpec as exc:
        assert str(exc)
        return
    assert spec is None or isinstance(spec, Memory)


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "request": st.none() | st.integers() | st.text(max_size=12) | _json,
            "limit": st.none() | st.integers() | st.text(max_size=12) | _json,
        },
    )
)
def test_header_mappings_decode_to_a_valid_memory_or_raise_invalid_memory_spec(raw):
    try:
        spec = from_header(raw)
    except InvalidMemorySpec:
        return
    assert spec is not None
    if spec.limit is not None:
        assert spec.request is not None and 0 < spec.request <= spec.limit <= MAX_SIZE


# --- to_header ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [Memory(limit="2GiB"), Memory(request="1GiB", limit="2GiB"), Memory(request="1GiB"), NO_SPEC],
    ids=str,
)
def test_to_header_round_trips_through_from_header(spec):
    assert from_header(spec.to_header()) == spec


def test_to_header_is_plain_json():
    import json

    header = Memory(request="1GiB", limit="2GiB").to_header()
    assert json.loads(json.dumps(header)) == {"request": GiB, "limit": 2 * GiB}


@given(st.integers(min_value=1, max_value=MAX_SIZE), st.integers(min_value=1, max_value=MAX_SIZE))
def test_to_header_round_trips_any_valid_spec(a, b):
    spec = Memory(request=min(a, b), limit=max(a, b))
    assert from_header(spec.to_header()) == spec


# --- resolve: call > task > default ---------------------------------------------------

CALL, TASK, DEFAULT = Memory(limit="1GiB"), Memory(limit="2GiB"), Memory(limit="3GiB")


def test_resolve_prefers_the_per_call_spec():
    assert resolve(CALL, TASK, DEFAULT) is CALL


def test_resolve_falls_back_to_the_task_option():
    assert resolve(None, TASK, DEFAULT) is TASK


def test_resolve_falls_back_to_the_worker_default():
    assert resolve(None, None, DEFAULT) is DEFAULT


def test_resolve_with_nothing_set_is_no_spec():
    assert resolve(None, None, None) == NO_SPEC


def test_resolve_per_call_spec_beats_the_task_option_even_when_smaller():
    small = Memory(limit="1MiB")
    assert resolve(small, Memory(limit="8GiB"), None) is small
