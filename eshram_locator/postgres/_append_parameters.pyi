# LocatorStore.append_histories's parameters packed in one pass (_append_parameters.c).
from collections.abc import Sequence

from eshram_locator.domain.history import LaterMonths

def pack(
    appends: Sequence[tuple[str, LaterMonths]], separator: str, /
) -> tuple[str, bytes, bytes, str, str, str, str, str, str, str, str]: ...
