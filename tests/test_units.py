"""parse_size / format_size: the only place sizes are strings (config, task options, CLI, errors)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oomless.units import MAX_SIZE, format_size, parse_size

MiB = 2**20
GiB = 2**30

# --- accepted forms ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512MiB", 512 * MiB),
        ("2GiB", 2 * GiB),
        ("2Gi", 2 * GiB),
        ("1.5GiB", 1_610_612_736),
        ("1Ki", 1024),
        ("1TiB", 2**40),
        ("1PiB", 2**50),
    ],
)
def test_binary_units_are_powers_of_1024(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.5G", 1_500_000_000),
        ("1.5GB", 1_500_000_000),
        ("300M", 300_000_000),
        ("64k", 64_000),
        ("2T", 2_000_000_000_000),
    ],
)
def test_decimal_units_are_powers_of_1000(text, expected):
    assert parse_size(text) == expected


def test_a_bare_number_string_is_bytes():
    assert parse_size("1024") == 1024


def test_a_trailing_b_alone_means_bytes():
    assert parse_size("4096B") == 4096


def test_an_int_is_bytes():
    assert parse_size(1_048_576) == 1_048_576


@pytest.mark.parametrize("text", ["2gib", "2GIB", "2gIb", "2GiB"])
def test_units_are_case_insensitive(text):
    assert parse_size(text) == 2 * GiB


@pytest.mark.parametrize("text", ["  2GiB", "2GiB  ", "2 GiB", "\t2GiB\n"])
def test_whitespace_around_number_and_unit_is_ignored(text):
    assert parse_size(text) == 2 * GiB


def test_a_leading_dot_fraction_is_accepted():
    assert parse_size(".5GiB") == GiB // 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1.001K", 1001), ("4.35MB", 4_350_000), ("1.003M", 1_003_000), ("0.1G", 100_000_000)],
)
def test_decimal_fractions_are_exact_not_float_rounded(text, expected):
    assert parse_size(text) == expected


def test_a_fraction_just_below_a_whole_byte_is_rounded_down_not_up():
    assert parse_size("0." + "9" * 40 + "KiB") == 1023


def test_fractional_bytes_are_rounded_down():
    assert parse_size("1.5") == 1


def test_the_largest_accepted_size_is_max_size():
    assert parse_size(MAX_SIZE) == MAX_SIZE


# --- rejections ---------------------------------------------------------------


@pytest.mark.parametrize("value", [True, False])
def test_bools_are_rejected_although_they_are_ints(value):
    with pytest.raises(ValueError, match=rf"got {value!r} \(bool\)"):
        parse_size(value)


def test_negative_int_is_rejected_and_named():
    with pytest.raises(ValueError, match=r"more than 0 bytes, got -5"):
        parse_size(-5)


@pytest.mark.parametrize("value", [0, "0", "0GiB", "0.0000001K"])
def test_zero_is_rejected(value):
    with pytest.raises(ValueError, match="more than 0 bytes"):
        parse_size(value)


def test_a_negative_string_is_not_a_size():
    with pytest.raises(ValueError, match=r"'-1GiB' is not a size"):
        parse_size("-1GiB")


def test_unknown_unit_is_rejected_with_the_value_and_the_accepted_forms():
    with pytest.raises(ValueError) as info:
        parse_size("5XB")
    message = str(info.value)
    assert "'5XB'" in message
    assert "512MiB" in message and "GiB" in message


@pytest.mark.parametrize("text", ["", "   ", "GiB", "1.2.3G", "1e9", "2 G iB", "½GiB"])
def test_malformed_strings_are_rejected(text):
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


@pytest.mark.parametrize("value", [1.5, 2.0, float("nan"), float("inf")])
def test_float_objects_are_rejected_with_type_named(value):
    with pytest.raises(ValueError, match=r"\(float\)"):
        parse_size(value)


@pytest.mark.parametrize("value", [None, [1024], {"limit": 1}, b"2GiB"])
def test_other_types_are_rejected_with_type_named(value):
    with pytest.raises(ValueError, match=rf"\({type(value).__name__}\)"):
        parse_size(value)


@pytest.mark.parametrize("value", [MAX_SIZE + 1, "9999999TiB", "99999999999999999999"])
def test_sizes_above_max_size_are_rejected(value):
    with pytest.raises(ValueError, match="larger than any machine"):
        parse_size(value)


def test_strings_over_64_characters_are_rejected_as_too_long():
    text = "1" + " " * 70 + "GiB"
    with pytest.raises(ValueError, match="too long to be a size"):
        parse_size(text)


def test_the_too_long_message_does_not_echo_the_whole_string():
    with pytest.raises(ValueError) as info:
        parse_size("9" * 100_000)
    assert len(str(info.value)) < 200


def test_an_int_too_large_to_print_is_rejected_with_a_readable_message():
    with pytest.raises(ValueError, match="memory limit .* larger than any machine"):
        parse_size(10**5000, "memory limit")


def test_what_names_the_value_in_the_message():
    with pytest.raises(ValueError, match=r"^oomless_budget 'lots' is not a size"):
        parse_size("lots", "oomless_budget")


# --- format_size --------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (300, "300 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (512 * MiB, "512.0 MiB"),
        (2 * GiB, "2.0 GiB"),
        (3 * 2**40, "3.0 TiB"),
        (2 * 2**50, "2.0 PiB"),
        (-2 * GiB, "-2.0 GiB"),
        (None, "no limit"),
    ],
)
def test_format_size_picks_the_largest_binary_unit_below_1024(n, text):
    assert format_size(n) == text


def test_what_format_size_prints_for_max_size_parses_back():
    assert parse_size(format_size(MAX_SIZE)) == MAX_SIZE


# --- properties -----------------------------------------------------------------


_BINARY = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "PiB": 2**50}


@given(st.integers(min_value=1, max_value=MAX_SIZE))
def test_parse_of_format_round_trips_within_display_rounding(n):
    text = format_size(n)
    unit = text.split()[1]
    # One decimal of the displayed unit: off by at most half of 0.1 unit (+1 for flooring).
    assert abs(parse_size(text) - n) <= 0.05 * _BINARY[unit] + 1, text


@given(st.integers(min_value=1, max_value=MAX_SIZE))
def test_ints_in_range_parse_to_themselves(n):
    assert parse_size(n) == n


@given(st.text())
def test_parse_size_raises_only_value_error_on_any_text(text):
    try:
        size = parse_size(text)
    except ValueError:
        return
    assert 0 < size <= MAX_SIZE


@given(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=True),
        st.binary(),
        st.lists(st.integers()),
        st.dictionaries(st.text(), st.integers()),
        st.tuples(st.text()),
        st.complex_numbers(),
        st.decimals(allow_nan=True),
        st.fractions(),
    )
)
def test_parse_size_raises_only_value_error_on_any_object(value):
    try:
        size = parse_size(value)
    except ValueError:
        return
    assert isinstance(size, int) and 0 < size <= MAX_SIZE


def test_a_container_holding_a_giant_int_is_rejected_with_a_readable_message():
    with pytest.raises(ValueError, match=r"got \[<16610-bit integer>\] \(list\)"):
        parse_size([10**5000])
