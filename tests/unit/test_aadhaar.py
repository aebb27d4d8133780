"""The Aadhaar guard: Verhoeff, finding, masking, scanning decoded records."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eshram_locator.domain.aadhaar import (
    find_aadhaar_like,
    is_aadhaar_like,
    mask,
    mask_record,
    mask_text,
    may_hold_aadhaar,
    scan_record,
    verhoeff_check_digit,
    verhoeff_valid,
)

VALID = "234123412346"  # Verhoeff-valid, first digit 2
OTHER = "499118665246"
SETTINGS = settings(max_examples=200, deadline=None)


def with_check_digit(payload: str) -> str:
    return payload + verhoeff_check_digit(payload)


# --- Verhoeff ---------------------------------------------------------------------------------


# Wikipedia's worked examples, and numbers widely used as UIDAI sandbox test Aadhaars.
@pytest.mark.parametrize(
    "number",
    [
        *("2363", "123451", "758722", "1428570", "0", VALID, OTHER),
        *("999941057058", "999971658847", "999933119405"),
    ],
)
def test_known_valid_verhoeff(number: str) -> None:
    assert verhoeff_valid(number)


@pytest.mark.parametrize(
    "number",
    ["2364", "123456", "234123412345", "234123412364", "", "2363a", "\uff12\uff13\uff16\uff13"],
)
def test_known_invalid_verhoeff(number: str) -> None:
    assert not verhoeff_valid(number)


def test_check_digit() -> None:
    assert verhoeff_check_digit("236") == "3"
    assert verhoeff_check_digit("12345") == "1"
    assert verhoeff_check_digit("75872") == "2"
    assert with_check_digit(VALID[:11]) == VALID
    with pytest.raises(ValueError, match="digit"):
        verhoeff_check_digit("12a")


@SETTINGS
@given(st.from_regex(r"[0-9]{11}", fullmatch=True), st.integers(0, 11), st.integers(1, 9))
def test_verhoeff_catches_every_single_digit_error(payload: str, position: int, delta: int) -> None:
    number = with_check_digit(payload)
    assert verhoeff_valid(number)
    wrong = str((int(number[position]) + delta) % 10)
    assert not verhoeff_valid(number[:position] + wrong + number[position + 1 :])


@SETTINGS
@given(st.from_regex(r"[0-9]{11}", fullmatch=True), st.integers(0, 10))
def test_verhoeff_catches_adjacent_transpositions(payload: str, position: int) -> None:
    number = with_check_digit(payload)
    a, b = number[position], number[position + 1]
    if a != b:
        swapped = number[:position] + b + a + number[position + 2 :]
        assert not verhoeff_valid(swapped)


def test_aadhaar_like_needs_12_digits_first_2_to_9() -> None:
    assert is_aadhaar_like(VALID)
    assert not is_aadhaar_like(with_check_digit("12341234123"))  # starts with 1
    assert not is_aadhaar_like(with_check_digit("02341234123"))  # starts with 0
    assert not is_aadhaar_like(with_check_digit("2341234123"))  # 11 digits
    assert not is_aadhaar_like("234123412345")  # checksum fails


# --- finding ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        VALID,
        f"aadhaar {VALID} given",
        f"A{VALID}B",
        "ID: 2341 2341 2346.",
        "2341-2341-2346",
        "call (2341-2341-2346)",
        "२३४१२३४१२३४६",  # Devanagari digits
    ],
)
def test_finds_aadhaar_like(text: str) -> None:
    assert find_aadhaar_like(text) == [VALID]


@pytest.mark.parametrize(
    "text",
    [
        f"1{VALID}",  # 13-digit run
        f"{VALID}0",
        "234123412345",  # Verhoeff fails
        with_check_digit("12341234123"),  # first digit 1
        "2341 2341-2346",  # mixed separators
        "2341  2341  2346",  # double spaces
        "23412 341 2346",  # not 4-4-4
        "short 2341",
        "",
    ],
)
def test_ignores_non_aadhaar(text: str) -> None:
    assert find_aadhaar_like(text) == []


def test_finds_overlapping_groupings_and_distinct_numbers() -> None:
    # "1111 2341 2341 2346": the first 12 digits are not valid, the last 12 are.
    assert find_aadhaar_like("1111 2341 2341 2346") == [VALID]
    assert find_aadhaar_like(f"{VALID} {OTHER} {VALID}") == [VALID, OTHER]


# --- masking ----------------------------------------------------------------------------------


def test_mask() -> None:
    assert mask(VALID) == "XXXXXXXX2346"
    assert mask("2341 2341 2346") == "XXXX XXXX 2346"
    assert mask("2341-2341-2346") == "XXXX-XXXX-2346"


def test_mask_text_masks_every_form() -> None:
    text = f"a {VALID} b 2341 2341 2346 c 2341-2341-2346 d 9{VALID}"
    masked = mask_text(text, frozenset({VALID}))
    assert masked == ("a XXXXXXXX2346 b XXXX XXXX 2346 c XXXX-XXXX-2346 d 9XXXXXXXX2346")
    assert mask_text("nothing to see here at all") == "nothing to see here at all"


def test_mask_text_reaches_a_fixpoint() -> None:
    # "2346 1234 123c" follows a digit, so it is no candidate until the contiguous number
    # before it is masked, which puts an X before it.
    hidden = with_check_digit("23461234123")
    text = f"{VALID} {hidden[4:8]} {hidden[8:]}"
    assert find_aadhaar_like(text) == [VALID]
    masked = mask_text(text)
    assert masked == f"XXXXXXXXXXXX XXXX {hidden[8:]}"
    assert find_aadhaar_like(masked) == []


# --- records ----------------------------------------------------------------------------------


def record() -> dict[str, Any]:
    return {
        "uan": VALID,
        "member_ref": "ref-7f3a9c",
        "fps_location": {"state_lgd": 9, "district_lgd": 140, "pincode": "221001"},
        "items": [
            {"commodity": "RICE", "scheme": "PMGKAY", "quantity_grams": 5000},
            {"commodity": f"note 2341 2341 2346 and {OTHER}", "scheme": "X", "quantity_grams": 1},
        ],
        "ration_card_id": int(OTHER),
        "tags": {VALID: "map key", "other": None},
        "raw": VALID.encode(),
        "confidence": 0.5,
        "consent": True,
    }


def test_scan_nested_record() -> None:
    assert scan_record(record()) == [
        ("items[1].commodity", VALID),
        ("items[1].commodity", OTHER),
        ("ration_card_id", OTHER),
        ("tags.XXXXXXXX2346", VALID),
        ("raw", VALID),
    ]


def test_uan_is_exempt_only_at_top_level() -> None:
    assert scan_record({"uan": VALID}) == []
    assert scan_record({"nested": {"uan": VALID}}) == [("nested.uan", VALID)]
    assert scan_record({"uan": VALID}, exempt_fields=frozenset()) == [("uan", VALID)]


def test_clean_record_has_no_hits() -> None:
    clean = {
        "transaction_id": "UP-TXN-00000001",
        "uan": VALID,
        "fps_location": {"state_lgd": 9, "district_lgd": 140, "pincode": "221001"},
        "transacted_at": 1_717_200_000_000,  # epoch millis: 13 digits
        "items": [{"commodity": "WHEAT", "quantity_grams": 35000}],
    }
    assert scan_record(clean) == []
    assert mask_record(clean, []) == clean


def test_mask_record_masks_everything_but_uan() -> None:
    original = record()
    before = copy.deepcopy(original)
    masked = mask_record(original, scan_record(original))
    assert original == before  # not modified
    assert scan_record(masked) == []
    assert masked["uan"] == VALID
    assert masked["items"][1]["commodity"] == "note XXXX XXXX 2346 and XXXXXXXX5246"
    assert masked["ration_card_id"] == 5246  # an int stays an int: its last 4 digits
    assert masked["tags"] == {"XXXXXXXX2346": "map key", "other": None}
    assert masked["raw"] == b"XXXXXXXX2346"
    assert masked["items"][0] == original["items"][0]
    assert masked["confidence"] == 0.5
    assert masked["consent"] is True


def test_mask_record_masks_hit_numbers_in_every_field() -> None:
    datum = {"a": VALID, "b": f"x{VALID}9", "uan": VALID}  # b: inside a 13-digit run
    masked = mask_record(datum, scan_record(datum))
    assert masked == {"a": "XXXXXXXX2346", "b": "xXXXXXXXX23469", "uan": VALID}


def test_scan_is_fast_on_ordinary_records() -> None:
    ordinary = {
        "transaction_id": "UP-2024-TXN-8842213",
        "source": "IM-PDS",
        "ration_card_id": "UP123456789",
        "member_ref": "adv:tok:3f2a7c9e1b4d4e8f9a0b1c2d3e4f5a6b",
        "fps_id": "FPS-UP-140-0042",
        "fps_location": {"state_lgd": 9, "district_lgd": 140, "pincode": "221001"},
        "allocation_month": "2024-06",
        "transacted_at": 1_717_200_000_000,
        "items": [{"commodity": "RICE", "scheme": "PMGKAY", "quantity_grams": 5000}] * 3,
    }
    started = time.perf_counter()
    for _ in range(2000):
        scan_record(ordinary)
    assert time.perf_counter() - started < 2.0  # ~20x headroom over a laptop


# --- properties -------------------------------------------------------------------------------

aadhaar_numbers = st.from_regex(r"[2-9][0-9]{10}", fullmatch=True).map(with_check_digit)
no_digits = st.text(
    alphabet=st.characters(exclude_categories=("Nd", "Cs")), max_size=30
)  # nothing adjacent can extend the digit run
separators = st.sampled_from(["", " ", "-"])


def written(number: str, separator: str) -> str:
    return separator.join((number[:4], number[4:8], number[8:]))


@SETTINGS
@given(aadhaar_numbers, separators, no_digits, no_digits)
def test_embedded_numbers_are_always_found(
    number: str, separator: str, before: str, after: str
) -> None:
    text = before + written(number, separator) + after
    assert number in find_aadhaar_like(text)
    datum = {"uan": number, "field": text, "list": [text]}
    hits = scan_record(datum)
    assert ("field", number) in hits
    assert ("list[0]", number) in hits
    masked = mask_record(datum, hits)
    assert masked["uan"] == number
    assert number not in masked["field"]
    assert scan_record(masked) == []


mixed_text = st.lists(
    st.one_of(
        aadhaar_numbers,
        st.builds(written, aadhaar_numbers, separators),
        st.text(max_size=20),
        st.from_regex(r"[0-9 -]{0,30}", fullmatch=True),
    ),
    max_size=6,
).map(lambda parts: "".join(parts))


@SETTINGS
@given(mixed_text)
def test_mask_leaves_no_valid_run(text: str) -> None:
    datum = {"note": text, "nested": {"items": [text, {"k": text}]}}
    masked = mask_record(datum, scan_record(datum))
    assert scan_record(masked) == []
    for _path, number in scan_record(datum):
        assert number not in repr(masked)


# The hot path's pre-check: False must mean the full scan finds nothing.
_digits_text = st.text(alphabet="0123456789 -٣४X", min_size=0, max_size=30)
_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=0, max_value=2_000_000_000_000),
    _digits_text,
    st.binary(max_size=20),
    st.sampled_from([VALID, f"id {OTHER}", "2341 2341 2346", int(VALID)]),
)
_records = st.recursive(
    _leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(_digits_text, st.sampled_from(["uan", "name"])), inner, max_size=4
        ),
    ),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None)
@given(_records)
def test_the_pre_check_never_clears_a_record_the_scan_would_flag(datum: Any) -> None:
    if not may_hold_aadhaar(datum):
        assert scan_record(datum) == []


def test_the_pre_check_clears_an_ordinary_collection() -> None:
    assert not may_hold_aadhaar(
        {
            "transaction_id": "UP-PDS-202504-cedc615ef2",
            "ration_card_id": "UP63935348729",
            "fps_location": {"state_lgd": 9, "district_lgd": 919, "pincode": "201904"},
            "items": [{"commodity": "wheat", "quantity_grams": 30000}],
            "uan": VALID,
        }
    )
    assert may_hold_aadhaar({"note": f"card {VALID}"})


def test_the_pre_check_defers_to_the_scan_for_every_form_of_a_number() -> None:
    """The JSON shortcut clears only ASCII text without a 12-digit run; every other form of a
    number (an int, other scripts' digits, bytes, grouped digits) reaches the full scan."""
    devanagari = VALID.translate(str.maketrans("0123456789", "०१२३४५६७८९"))
    grouped = f"{VALID[:4]}-{VALID[4:8]}-{VALID[8:]}"
    for value in (int(VALID), devanagari, VALID.encode(), grouped):
        datum = {"transaction_id": "UP-PDS-202504-cedc615ef2", "note": value}
        assert scan_record(datum), value
        assert may_hold_aadhaar(datum), value
    # ten digits (a ration card number) are cleared without the walk
    assert not may_hold_aadhaar({"ration_card_id": "AP-002-9426289068"})
