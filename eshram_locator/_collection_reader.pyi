# The compiled input readers (_collection_reader.c); see intake.fast_collection_reader.
from collections.abc import Iterable
from datetime import datetime

from confluent_kafka import Message

from eshram_locator.domain.model import RationCollection, WorkerRegistration

def read(header: bytes, payload: bytes | None, key: bytes | None, /) -> RationCollection | None: ...
def read_registration(
    header: bytes, payload: bytes | None, key: bytes | None, /
) -> WorkerRegistration | None: ...
def read_collections(
    header: bytes, messages: list[Message], collections_topic: str, /
) -> (
    tuple[
        list[RationCollection],
        dict[str, list[RationCollection]] | None,
        dict[tuple[str, int], int],
        list[int],
    ]
    | None
): ...
def configure(
    collection: type,
    collection_fields: tuple[str, ...],
    location: type,
    location_fields: tuple[str, ...],
    item: type,
    item_fields: tuple[str, ...],
    registration: type,
    registration_fields: tuple[str, ...],
    auth_modes: tuple[object, ...],
    portabilities: tuple[object, ...],
    epoch: datetime,
    states: Iterable[int],
    /,
) -> None: ...
