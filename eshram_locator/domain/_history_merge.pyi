# The member histories' fast merge (_history_merge.c); see MemberHistory.merge_later.
from eshram_locator.domain.model import RationCollection

def merge_later(
    digests: bytes,
    tail: bytes,
    collections: list[RationCollection],
    current: tuple[int, int] | None,
    last_rebaseline: str | None,
    /,
) -> tuple[bytes, bytes, int, bool, str, bool, tuple[int, int] | bool | None] | None: ...
def later_months(
    collections: list[RationCollection], /
) -> tuple[bytes, bytes, int, str, str, tuple[int, int] | None] | None: ...
def configure(
    biometric: tuple[object, ...],
    others: tuple[object, ...],
    collection_type: type,
    location_type: type,
    /,
) -> None: ...
def sha_extensions(enabled: bool | None = None, /) -> bool: ...
