# LocatorStore.append_histories's parameters packed in one pass (_append_parameters.c).
from eshram_locator.domain.history import LaterMonths

def pack(
    appends: list[tuple[str, LaterMonths]], separator: str, /
) -> tuple[str, bytes, bytes, str, str, str, str, str, str, str, str]: ...
