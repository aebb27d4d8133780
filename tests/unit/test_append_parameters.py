"""The append's parameters (``LocatorStore.append_histories``): the compiled packer (the C
extension ``postgres._append_parameters``) against the Python one it stands in for, text for
text; both refuse a key that holds the separator. The statements that read them run against
real PostgreSQL in tests/integration/test_contract_roundtrip.py."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eshram_locator.domain.history import LaterMonths
from eshram_locator.postgres import store

MONTHS = st.sampled_from(["2024-01", "2024-02", "2025-12", "2031-07"])
# Member refs as intake lets them in: no control character; any other code point, so that the
# order of UTF-8 bytes must be the order of code points (and of Python's sort).
REFS = st.text(st.characters(min_codepoint=0x20, exclude_categories=("Cs",)), max_size=30)
LATER: st.SearchStrategy[LaterMonths] = st.tuples(
    st.integers(1, 4).flatmap(lambda n: st.binary(min_size=8 * n, max_size=8 * n)),
    st.binary(max_size=200),
    st.integers(1, 70_000),
    MONTHS,
    MONTHS,
    st.none() | st.tuples(st.integers(1, 99), st.integers(1, 999)),
)


def test_the_extension_is_built() -> None:
    assert store._compiled_append_parameters is not None, (
        "eshram_locator.postgres._append_parameters is not built"
    )


@given(st.dictionaries(REFS, LATER, max_size=40))
def test_the_compiled_parameters_are_the_python_ones(appends: dict[str, LaterMonths]) -> None:
    listed = list(appends.items())
    if not listed:
        return  # never called empty
    assert store._append_parameters(listed) == store._append_parameters_in_python(listed)


def test_in_member_order_with_starts_and_lengths() -> None:
    later: dict[str, LaterMonths] = {
        "MR-b": (b"B" * 16, b"line-b", 2, "2024-02", "2024-03", None),
        "MR-a": (b"A" * 8, b"line-a-longer", 1, "2024-01", "2024-01", (9, 140)),
        "MR-\u00e9": (b"E" * 8, b"", 1, "2025-12", "2025-12", (27, 519)),
    }
    parameters = store._append_parameters(list(later.items()))
    sep = store._UNIT_SEPARATOR
    assert parameters == {
        "refs": f"MR-a{sep}MR-b{sep}MR-\u00e9",
        "digests": b"A" * 8 + b"B" * 16 + b"E" * 8,
        "lines": b"line-a-longerline-b",
        "digest_starts": "1,9,25",
        "counts": "1,2,1",
        "line_starts": "1,14,20",
        "line_lengths": "13,6,0",
        "firsts": f"2024-01{sep}2024-02{sep}2025-12",
        "lasts": f"2024-01{sep}2024-03{sep}2025-12",
        "states": "9,0,27",
        "districts": "140,0,519",
        "separator": sep,
    }


@pytest.mark.parametrize("field", ["ref", "month"])
@pytest.mark.parametrize(
    "pack", [store._append_parameters, store._append_parameters_in_python], ids=["C", "Python"]
)
def test_a_key_holding_the_separator_is_refused(field: str, pack: object) -> None:
    bad = f"MR{store._UNIT_SEPARATOR}1"
    ref, month = (bad, "2024-01") if field == "ref" else ("MR-1", bad)
    appends: list[tuple[str, LaterMonths]] = [
        ("MR-0", (b"0" * 8, b"x", 1, "2024-01", "2024-01", None)),
        (ref, (b"1" * 8, b"y", 1, month, "2024-01", None)),
    ]
    with pytest.raises(ValueError, match="control character"):
        pack(appends)  # type: ignore[operator]


def test_the_compiled_packer_refuses_what_is_not_later_months() -> None:
    packer = store._compiled_append_parameters
    assert packer is not None
    with pytest.raises(TypeError):
        packer.pack([("MR-1", (b"", b"", 1, "2024-01", "2024-01"))], "\x1f")  # type: ignore[list-item]
    with pytest.raises(TypeError):
        packer.pack([("MR-1", ("x", b"", 1, "2024-01", "2024-01", None))], "\x1f")  # type: ignore[list-item]
    with pytest.raises(TypeError):
        packer.pack([(1, (b"", b"", 1, "2024-01", "2024-01", None))], "\x1f")  # type: ignore[list-item]
