"""The contract over the real broker and database: every record through Kafka and back, the
schema topic as a consumer in another language would read it, and the store's round trips."""

from __future__ import annotations

import io
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from fastavro import schemaless_reader

from eshram_locator.avro_codec import (
    CONFLUENT_MAGIC,
    SINGLE_OBJECT_HEADER_SIZE,
    SINGLE_OBJECT_MAGIC,
    AvroCodec,
    SchemaCatalog,
    SchemaRegistryClient,
    canonical_form,
    fingerprint,
    fingerprint_from_hex,
    fingerprint_hex,
    schema_topic_records,
)
from eshram_locator.domain.history import MemberHistory, later_months
from eshram_locator.domain.model import (
    AddressUpdateRequested,
    AuthMode,
    ChangeType,
    CollectionItem,
    Evidence,
    Location,
    LocationChanged,
    Migration,
    MigrationFlow,
    Portability,
    RationCollection,
    WorkerRegistration,
)
from eshram_locator.domain.rules import (
    Observation,
    address_request_id,
    history_of,
    location_event_id,
)
from eshram_locator.errors import StaleMemberRowError
from eshram_locator.kafka import clients
from eshram_locator.kafka.publish import publish_schemas
from eshram_locator.kafka.topics import COMPACT, provision_topics, topic_specs
from eshram_locator.postgres.migrate import apply_migrations
from eshram_locator.postgres.store import (
    SESSION_OPTIONS,
    LocatorStore,
    OutboxRow,
    StoredChange,
    StoredWorker,
    WorkerHead,
    observation_key,
)
from eshram_locator.records import FROM_AVRO, to_avro
from eshram_locator.settings import Settings
from eshram_locator.topics import TopicNames
from tests.integration.locator_support import worker_heads_astray
from tests.unit.test_avro_codec import _FakeRegistry
from tests.unit.test_history_merge import add_collection
from tests.unit.test_history_merge import appended as appended_form

pytestmark = pytest.mark.integration

TopicFactory = Callable[..., str]

# --- realistic records (timestamps at millisecond precision: timestamp-millis keeps no more) ----

UAN = "100234567891"
MEMBER_REF = "adv:9f2c41d0-7b3e-4a55-a1c2-5d8e0f6b7a13"
HOME = Location(9, 164, 791, 146523, "221002")  # Varanasi, Uttar Pradesh
WORK = Location(27, 519, 4156, 556677, "400072")  # Mumbai Suburban, Maharashtra
T0 = datetime(2024, 4, 1, 5, 42, 17, 381000, tzinfo=UTC)

COLLECTION = RationCollection(
    transaction_id="IMPDS-27-2024-04-0000917321",
    source="IM-PDS",
    ration_card_id="UP-0916-4007-8812",
    member_ref=MEMBER_REF,
    auth_mode=AuthMode.FINGERPRINT,
    fps_id="FPS-27-519-0412",
    fps_location=WORK,
    card_state_lgd=9,
    portability=Portability.INTER_STATE,
    allocation_month="2024-04",
    transacted_at=T0,
    items=(
        CollectionItem("RICE", "PMGKAY", 15_000),
        CollectionItem("WHEAT", "NFSA-PHH", 10_000),
    ),
)

REGISTRATION = WorkerRegistration(
    uan=UAN,
    member_ref=MEMBER_REF,
    permanent_address=HOME,
    present_address=None,
    occupation_nco="7112.0100",
    consent_state_sharing=True,
    sms_reachable=True,
    updated_at=datetime(2023, 11, 20, 9, 15, 3, 27000, tzinfo=UTC),
)

MOVED = LocationChanged(
    event_id=location_event_id(UAN, "2024-03", WORK.district, ChangeType.MOVED),
    change_type=ChangeType.MOVED,
    uan=UAN,
    previous_location=HOME,
    current_location=WORK,
    effective_month="2024-03",
    detected_at=T0 + timedelta(seconds=3),
    migration=Migration.INTER_STATE,
    home_state_lgd=9,
    evidence=Evidence(2, 3, "2024-03", "2024-04", ("FPS-27-519-0409", "FPS-27-519-0412")),
    confidence=0.6667,
    present_address_matches=False,
    supersedes_event_id=None,
)

RETRACTED = replace(
    MOVED,
    event_id=location_event_id(UAN, "2024-03", WORK.district, ChangeType.RETRACTED),
    change_type=ChangeType.RETRACTED,
    detected_at=T0 + timedelta(days=40),
    supersedes_event_id=MOVED.event_id,
)

AS_OF = datetime(2024, 3, 1, tzinfo=UTC)
ADDRESS_REQUEST = AddressUpdateRequested(
    request_id=address_request_id(UAN, WORK.district, AS_OF),
    uan=UAN,
    derived_location=WORK,
    registered_present_address=None,
    reason="NO_PRESENT_ADDRESS",
    requested_at=AS_OF,
)

FLOW = MigrationFlow(
    month="2024-03",
    from_state_lgd=9,
    from_district_lgd=164,
    to_state_lgd=27,
    to_district_lgd=519,
    workers=1_284,
    moves_in=97,
)

# (record, message key as the contract says)
SAMPLES: list[tuple[Any, str]] = [
    (COLLECTION, MEMBER_REF),
    (REGISTRATION, UAN),
    (MOVED, UAN),
    (RETRACTED, UAN),
    (ADDRESS_REQUEST, UAN),
    (FLOW, f"{FLOW.month}:{FLOW.from_district_lgd}:{FLOW.to_district_lgd}"),
]
IDS = [
    "RationCollection",
    "WorkerRegistration",
    "LocationChanged-MOVED",
    "LocationChanged-RETRACTED",
    "AddressUpdateRequested",
    "MigrationFlow",
]


def test_every_record_of_the_contract_is_sampled(settings: Settings) -> None:
    catalog = SchemaCatalog.load(settings.avro_dir)
    assert {to_avro(record)[0] for record, _ in SAMPLES} == set(catalog.record_names())


# --- Kafka helpers ------------------------------------------------------------------------------


Consumed = tuple[bytes | None, bytes | None]


def consume(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list[Consumed]:
    """(key, value) of the first ``expected`` messages of ``topic``, read as a plain consumer."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"contract-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    found: list[Consumed] = []
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = sorted(metadata.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        deadline = datetime.now(UTC) + timedelta(seconds=timeout_s)
        while len(found) < expected and datetime.now(UTC) < deadline:
            for message in consumer.consume(expected - len(found), 0.5):
                assert message.error() is None, message.error()
                found.append((message.key(), message.value()))
    finally:
        consumer.close()
    assert len(found) == expected, f"{topic}: {len(found)} of {expected} messages in {timeout_s} s"
    return found


def produce(bootstrap: str, topic: str, key: str, value: bytes) -> None:
    producer = clients.producer(bootstrap, **{"linger.ms": 0})
    producer.produce(topic, value, key.encode())
    clients.flush_all(producer, 30)


def round_trip(
    codec: AvroCodec, reader: AvroCodec, bootstrap: str, topic: str, record: Any, key: str
) -> bytes:
    """Encode with ``codec``, produce, consume, decode with ``reader`` (another instance),
    convert back: the record comes back equal. Returns the payload."""
    name, datum = to_avro(record)
    payload = codec.encode(name, datum, topic=topic)
    produce(bootstrap, topic, key, payload)
    [(got_key, got_value)] = consume(bootstrap, topic, 1)
    assert got_key == key.encode()
    assert got_value == payload
    decoded_name, decoded = reader.decode(got_value)
    assert decoded_name == name
    assert FROM_AVRO[decoded_name](decoded) == record
    return payload


# --- single-object encoding ---------------------------------------------------------------------


@pytest.mark.parametrize(("record", "key"), SAMPLES, ids=IDS)
def test_single_object_round_trip(
    record: Any, key: str, settings: Settings, kafka_bootstrap: str, unique_topic: TopicFactory
) -> None:
    writer = AvroCodec(SchemaCatalog.load(settings.avro_dir))
    reader = AvroCodec(SchemaCatalog.load(settings.avro_dir))
    payload = round_trip(writer, reader, kafka_bootstrap, unique_topic(), record, key)
    entry = writer.catalog.current(to_avro(record)[0])
    assert payload[:2] == SINGLE_OBJECT_MAGIC
    assert payload[2:SINGLE_OBJECT_HEADER_SIZE] == entry.fingerprint.to_bytes(
        8, "little", signed=True
    )


# --- Confluent framing, against an in-process registry ------------------------------------------


@pytest.fixture
def registry() -> Iterator[_FakeRegistry]:
    server = _FakeRegistry()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize(("record", "key"), SAMPLES, ids=IDS)
def test_confluent_framing_round_trip(
    record: Any,
    key: str,
    settings: Settings,
    kafka_bootstrap: str,
    unique_topic: TopicFactory,
    registry: _FakeRegistry,
) -> None:
    topic = unique_topic()
    writer = AvroCodec(SchemaCatalog.load(settings.avro_dir), SchemaRegistryClient(registry.url))
    # A fresh process: its client knows no id and fetches the writer schema from the registry.
    reader = AvroCodec(SchemaCatalog.load(settings.avro_dir), SchemaRegistryClient(registry.url))
    payload = round_trip(writer, reader, kafka_bootstrap, topic, record, key)
    assert payload[:1] == CONFLUENT_MAGIC
    schema_id = int.from_bytes(payload[1:5], "big")
    assert registry.subjects == {f"{topic}-value": [schema_id]}
    assert ("GET", f"/schemas/ids/{schema_id}") in registry.requests


# --- locator.schemas ----------------------------------------------------------------------------


@pytest.fixture
def schema_names(admin: AdminClient) -> Iterator[TopicNames]:
    """A unique prefix whose schema topic exists, compacted, as provisioning creates it."""
    names = TopicNames(f"test.schemas.{uuid.uuid4().hex[:8]}.")
    [spec] = [s for s in topic_specs(1, 1, 1, prefix=names.prefix) if s.name == names.schemas]
    assert spec.config == COMPACT
    provision_topics(admin, [spec])
    try:
        yield names
    finally:
        for future in admin.delete_topics([names.schemas], operation_timeout=30).values():
            future.result()


def _millis(value: Any) -> Any:
    """A fastavro datum with datetimes as epoch milliseconds (how a schema without logical
    types, such as a Parsing Canonical Form, reads a timestamp-millis field)."""
    if isinstance(value, datetime):
        return (value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    if isinstance(value, dict):
        return {key: _millis(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_millis(item) for item in value]
    return value


def test_schema_topic_is_all_a_consumer_needs(
    settings: Settings, kafka_bootstrap: str, schema_names: TopicNames
) -> None:
    codec = AvroCodec(SchemaCatalog.load(settings.avro_dir))
    published = publish_schemas(clients.producer(kafka_bootstrap), codec, schema_names)
    shipped = schema_topic_records(codec.catalog)
    assert published == len(shipped) > 0

    records = consume(kafka_bootstrap, schema_names.schemas, published)
    keys = []
    for key, value in records:
        assert key is not None
        assert value is not None
        text = key.decode("ascii")
        assert re.fullmatch("[0-9a-f]{16}", text), text
        schema_json = value.decode("utf-8")
        assert canonical_form(schema_json) == schema_json  # the value is the canonical form
        assert text == fingerprint_hex(fingerprint(schema_json))
        keys.append(text)
    assert sorted(keys) == sorted(key for key, _ in shipped)

    # A consumer with nothing but the topic: register what it read, then decode our records.
    catalog = SchemaCatalog()
    for key, value in records:
        assert key is not None
        assert value is not None
        catalog.register(value, expected_fingerprint=fingerprint_from_hex(key.decode("ascii")))
    assert len(catalog) == published
    assert {entry.record_name for entry in catalog} == set(codec.catalog.record_names())
    for record, _ in SAMPLES:
        name, datum = to_avro(record)
        payload = codec.encode(name, datum)
        assert payload[:2] == SINGLE_OBJECT_MAGIC
        entry = catalog.get(int.from_bytes(payload[2:10], "little", signed=True))
        assert entry is not None, f"{name}: writer schema not on the schema topic"
        assert entry.record_name == name
        body = io.BytesIO(payload[SINGLE_OBJECT_HEADER_SIZE:])
        decoded = schemaless_reader(body, entry.parsed, None)
        assert body.tell() == len(payload) - SINGLE_OBJECT_HEADER_SIZE
        assert decoded == _millis(datum)


# --- PostgreSQL ---------------------------------------------------------------------------------


def test_migrations_apply_once(fresh_database: str) -> None:
    first = apply_migrations(fresh_database)
    assert first, "no migration applied to an empty database"
    assert first == sorted(first)
    assert apply_migrations(fresh_database) == []
    with psycopg.connect(fresh_database) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations")]
    assert sorted(versions) == first


@pytest.fixture
def store(fresh_database: str) -> Iterator[LocatorStore]:
    apply_migrations(fresh_database)
    store = LocatorStore.connect(fresh_database)
    try:
        yield store
    finally:
        store.close()


def _observation(collection: RationCollection) -> Observation:
    """What the locator counts: the idempotency key of rule 8 as the transaction id."""
    return replace(
        Observation.from_collection(collection),
        transaction_id=observation_key(collection.source, collection.transaction_id),
    )


OTP_AT_HOME = replace(
    COLLECTION,
    transaction_id="UPPDS-2024-05-0000000042",
    source="UP-PDS",
    auth_mode=AuthMode.OTP,
    fps_id="FPS-09-164-0031",
    fps_location=Location(9, 164),  # optional LGD parts and pincode unknown
    portability=Portability.NONE,
    allocation_month="2024-05",
    transacted_at=T0 + timedelta(days=31, hours=3),
)
SAME_ID_OTHER_PDS = replace(COLLECTION, source="MH-PDS")  # ids are unique per PDS only
OTHER_MEMBER = replace(
    COLLECTION, transaction_id="IMPDS-27-2024-04-0000917322", member_ref="adv:other"
)


def test_member_histories_round_trip(store: LocatorStore) -> None:
    collections = [COLLECTION, OTP_AT_HOME, SAME_ID_OTHER_PDS, OTHER_MEMBER]
    with store.unit_of_work():
        rows = store.lock_members(c.member_ref for c in collections)
        assert set(rows) == {MEMBER_REF, "adv:other"}
        assert all(len(row.history) == 0 and row.uan is None for row in rows.values())
        for c in collections:
            assert add_collection(rows[c.member_ref].history, c)
        store.save_histories(list(rows.values()))
    with store.unit_of_work():
        found = store.lock_members([MEMBER_REF, "adv:other", "adv:nobody"])
    assert found[MEMBER_REF].history == history_of(
        _observation(c) for c in (COLLECTION, OTP_AT_HOME, SAME_ID_OTHER_PDS)
    )
    assert found["adv:other"].history == history_of([_observation(OTHER_MEMBER)])
    assert len(found["adv:nobody"].history) == 0  # a new member, empty history
    # rule 8: a transaction seen before changes nothing
    assert not found[MEMBER_REF].history.add(
        observation_key(COLLECTION.source, COLLECTION.transaction_id),
        "2024-09",
        0,
        True,
        "FPS-X",
        Location(27, 519),
    )


def test_histories_of_every_length_are_written_back_whole(store: LocatorStore) -> None:
    """One statement writes a batch's histories, sent as one byte string and the lengths:
    each member gets exactly its own, whatever the lengths around it."""
    refs = ["MR-L0", "MR-L1", "MR-L2", "MR-L3"]
    with store.unit_of_work():
        rows = store.lock_members(refs)
        for count, ref in enumerate(refs):  # 0 to 3 transactions: histories of four lengths
            for number in range(count):
                add_collection(
                    rows[ref].history,
                    replace(COLLECTION, transaction_id=f"T-L{number}", member_ref=ref),
                )
        store.save_histories([rows[ref] for ref in refs])
    with store.unit_of_work():
        stored = store.members(refs)
    assert [len(stored[ref].history) for ref in refs] == [0, 1, 2, 3]
    assert [stored[ref].history.to_bytes() for ref in refs] == [
        rows[ref].history.to_bytes() for ref in refs
    ]
    assert len({len(stored[ref].history.to_bytes()) for ref in refs}) == 4


def _later(ref: str, month: str, where: Location = HOME, **changes: Any) -> RationCollection:
    """A collection of ``ref`` in ``month`` (its transaction id: the month, unless given)."""
    fields: dict[str, Any] = {
        "member_ref": ref,
        "allocation_month": month,
        "transaction_id": f"T-{month}",
        "fps_location": where,
        "transacted_at": datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC),
    }
    return replace(COLLECTION, **(fields | changes))


def test_later_months_are_appended_unread_as_the_merge_would_store_them(
    store: LocatorStore, fresh_database: str
) -> None:
    """``append_histories`` writes exactly what reading the row and ``merge_later`` would
    store, where that needs no read (months after the stored ones, no transaction counted
    before, no deleted worker's collections to skip); every other row stays as it was, for the
    batch to lock and read. It returns the rows whose timeline may have changed (the merge's
    answer True, and any with a re-baseline), as they are after the append."""
    at_home = WorkerHead("100000000001", HOME.state_lgd, HOME.district_lgd, None)
    rebaselined = WorkerHead("100000000002", HOME.state_lgd, HOME.district_lgd, "2024-02")
    registered = {
        "MR-HOME": at_home,
        "MR-AWAY": at_home,
        "MR-REBASELINED": rebaselined,
        "MR-REBASELINED-OTP": rebaselined,
    }
    earlier = {  # each member's stored collections
        "MR-EMPTY": [],
        "MR-HOME": [_later("MR-HOME", "2024-02"), _later("MR-HOME", "2024-03")],
        "MR-UNREGISTERED": [_later("MR-UNREGISTERED", "2024-03")],
        "MR-SAME-MONTH": [_later("MR-SAME-MONTH", "2024-04")],
        "MR-SEEN": [_later("MR-SEEN", "2024-03")],
        "MR-AWAY": [_later("MR-AWAY", "2024-03")],
        "MR-REBASELINED": [_later("MR-REBASELINED", "2024-03")],
        "MR-REBASELINED-OTP": [_later("MR-REBASELINED-OTP", "2024-03")],
        "MR-DEREGISTERED": [_later("MR-DEREGISTERED", "2024-03")],
        "MR-NO-LAST-MONTH": [_later("MR-NO-LAST-MONTH", "2024-03")],
    }
    batch = {
        "MR-EMPTY": [_later("MR-EMPTY", "2024-04"), _later("MR-EMPTY", "2024-05")],
        "MR-HOME": [_later("MR-HOME", "2024-04"), _later("MR-HOME", "2024-04", transaction_id="x")],
        "MR-UNREGISTERED": [_later("MR-UNREGISTERED", "2024-04", where=WORK)],
        "MR-SAME-MONTH": [_later("MR-SAME-MONTH", "2024-04", transaction_id="again")],
        "MR-SEEN": [_later("MR-SEEN", "2024-04", transaction_id="T-2024-03")],  # counted
        "MR-AWAY": [_later("MR-AWAY", "2024-04", where=WORK)],
        "MR-REBASELINED": [_later("MR-REBASELINED", "2024-04")],
        "MR-REBASELINED-OTP": [  # no presence: nothing to derive
            _later("MR-REBASELINED-OTP", "2024-04", where=WORK, auth_mode=AuthMode.OTP)
        ],
        "MR-DEREGISTERED": [_later("MR-DEREGISTERED", "2024-04")],
        "MR-NO-LAST-MONTH": [_later("MR-NO-LAST-MONTH", "2024-04")],
        "MR-NO-ROW": [_later("MR-NO-ROW", "2024-04")],
    }
    with store.unit_of_work():
        rows = store.lock_members(
            earlier, {ref: head.uan for ref, head in registered.items()}, registered
        )
        for ref, collections in earlier.items():
            for collection in collections:
                assert add_collection(rows[ref].history, collection)
        store.save_histories([rows[ref] for ref in earlier if earlier[ref]])
    with psycopg.connect(fresh_database) as conn:
        conn.execute(
            "UPDATE members SET deregistered_at = now() WHERE member_ref = 'MR-DEREGISTERED'"
        )
        conn.execute(
            "UPDATE members SET history_last_month = NULL WHERE member_ref = 'MR-NO-LAST-MONTH'"
        )
    with store.unit_of_work():
        before = {ref: row.history.to_bytes() for ref, row in store.members(list(batch)).items()}
    before["MR-NO-ROW"] = b""
    appends = [(ref, later_months(collections)) for ref, collections in batch.items()]
    assert all(later is not None for _, later in appends)
    with store.unit_of_work():
        appended, review = store.append_histories(appends)  # type: ignore[arg-type]
    assert appended == {
        "MR-EMPTY",
        "MR-HOME",
        "MR-UNREGISTERED",
        "MR-AWAY",
        "MR-REBASELINED",
        "MR-REBASELINED-OTP",
        "MR-NO-ROW",  # inserted, unregistered, with its collections
    }
    assert review.keys() == {"MR-AWAY", "MR-REBASELINED"}
    with psycopg.connect(fresh_database) as conn:
        after = {
            ref: (history, last_month)
            for ref, history, last_month in conn.execute(
                "SELECT member_ref, history, history_last_month FROM members"
                " WHERE member_ref = ANY(%s)",
                (list(batch),),
            )
        }
        inserted = conn.execute(
            "SELECT uan, deregistered_at, worker_state_lgd FROM members"
            " WHERE member_ref = 'MR-NO-ROW'"
        ).fetchone()
        versions = dict(
            conn.execute(
                "SELECT member_ref, ctid::text FROM members WHERE member_ref = ANY(%s)",
                (list(review),),
            ).fetchall()
        )
    assert inserted == (None, None, None)
    # the rows to review as they are after the append (the version the next write checks)
    assert {ref: row.version for ref, row in review.items()} == versions
    assert all(row.deregistered_at is None for row in review.values())
    for ref, collections in batch.items():
        if ref not in appended:
            assert after[ref][0] == before[ref], ref
            continue
        merged = MemberHistory.from_bytes(before[ref])
        head = registered.get(ref)
        counted, moves = merged.merge_later(  # type: ignore[misc]
            collections,
            None if head is None else head.current_district,
            None if head is None else head.last_rebaseline,
        )
        assert counted == len(collections)
        assert ref in review or not moves  # a re-baseline is returned even where it is old
        assert after[ref] == (merged.to_bytes(), max(c.allocation_month for c in collections))
        if ref in review:
            row = review[ref]
            assert row.history.to_bytes() == merged.to_bytes()
            assert (row.member_ref, row.uan, row.worker) == (ref, head.uan, head)  # type: ignore[union-attr]


def test_a_history_of_any_digest_count_is_appended_to_whole(
    store: LocatorStore, fresh_database: str
) -> None:
    """The statement reads the stored digest count (4 bytes, big-endian) itself: each of the
    four bytes counts."""
    line = b"2024-030" + orjson.dumps([1, ["FPS-1"], []])
    counts = (1, 255, 256, 65_535, 65_536, 70_000)
    stored = {
        f"MR-D{count}": b"\x01" + count.to_bytes(4, "big") + bytes(8 * count) + line
        for count in counts
    }
    with psycopg.connect(fresh_database) as conn:
        for ref, history in stored.items():
            conn.execute(
                "INSERT INTO members (member_ref, history, history_last_month)"
                " VALUES (%s, %s, '2024-03')",
                (ref, history),
            )
    later = later_months([_later("MR-D", "2024-04", transaction_id="new")])
    assert later is not None
    with store.unit_of_work():
        appended, _ = store.append_histories([(ref, later) for ref in stored])
    assert appended == set(stored)
    with psycopg.connect(fresh_database) as conn:
        after = dict(conn.execute("SELECT member_ref, history FROM members").fetchall())
    for ref in appended:
        assert after[ref] == appended_form(stored[ref], later), ref


def test_every_write_of_a_history_keeps_its_last_month(
    store: LocatorStore, fresh_database: str
) -> None:
    refs = ["MR-W1", "MR-W2"]
    uan = "100000000003"
    head = WorkerHead(uan, HOME.state_lgd, HOME.district_lgd, None)
    with store.unit_of_work():
        rows = store.lock_members(refs, {"MR-W1": uan}, {"MR-W1": head})
        add_collection(rows["MR-W1"].history, _later("MR-W1", "2024-05"))
        add_collection(rows["MR-W1"].history, _later("MR-W1", "2024-03"))
        add_collection(rows["MR-W2"].history, _later("MR-W2", "2024-02"))
        store.save_histories([rows[ref] for ref in refs])
    query = "SELECT member_ref, history_last_month FROM members WHERE member_ref = ANY(%s)"
    with psycopg.connect(fresh_database) as conn:
        assert dict(conn.execute(query, (refs,)).fetchall()) == {
            "MR-W1": "2024-05",
            "MR-W2": "2024-02",
        }
    with store.unit_of_work():
        store.delete_workers([(uan, "MR-W1", T0)])
    with psycopg.connect(fresh_database) as conn:
        assert dict(conn.execute(query, (refs,)).fetchall()) == {
            "MR-W1": None,
            "MR-W2": "2024-02",
        }


def test_migration_0006_gives_each_stored_history_its_last_month(fresh_database: str) -> None:
    apply_migrations(fresh_database, up_to=5)
    histories: dict[str, bytes | None] = {"MR-M0": None}
    for count in range(1, 4):
        history = MemberHistory()
        for month in range(count):
            add_collection(history, _later(f"MR-M{count}", f"2024-{month * 3 + 1:02d}"))
        histories[f"MR-M{count}"] = history.to_bytes()
    with psycopg.connect(fresh_database) as conn:
        for ref, stored in histories.items():
            conn.execute("INSERT INTO members (member_ref, history) VALUES (%s, %s)", (ref, stored))
    assert apply_migrations(fresh_database)[:1] == [6]
    with psycopg.connect(fresh_database) as conn:
        found = dict(conn.execute("SELECT member_ref, history_last_month FROM members").fetchall())
    assert found == {"MR-M0": None, "MR-M1": "2024-01", "MR-M2": "2024-04", "MR-M3": "2024-07"}


def test_the_registry_writes_bring_the_locked_rows_up_to_date(store: LocatorStore) -> None:
    """A batch's registry path writes member rows it has locked (a uan, the worker's head, a
    deletion) and goes on with the rows it holds: each write brings them up to date, as a
    read would find them."""
    worker = _stored_worker("100000000095", "MR-U1", [[None, {"state_lgd": 9}]])
    with store.unit_of_work():
        rows = store.lock_members(["MR-U1", "MR-U2"])
        add_collection(rows["MR-U1"].history, COLLECTION)
        store.save_histories([rows["MR-U1"]])
    with store.unit_of_work():
        rows = store.lock_members(["MR-U1", "MR-U2"])
        store.set_member_uans([("MR-U1", worker.uan)], rows)
        assert rows == store.members(["MR-U1", "MR-U2"])
        store.save_workers([worker], rows)
        assert rows["MR-U1"].worker == WorkerHead(worker.uan, 9, 164, None)
        assert rows == store.members(["MR-U1", "MR-U2"])
        store.delete_workers([(worker.uan, "MR-U1", datetime(2025, 1, 1, tzinfo=UTC))], rows)
        assert len(rows["MR-U1"].history) == 0
        assert rows == store.members(["MR-U1", "MR-U2"])


def test_a_member_named_by_a_new_registration_is_written_once(store: LocatorStore) -> None:
    """``lock_members`` inserts a member a registration names with the worker head the caller
    expects; ``save_workers`` then writes no second version of the row, and corrects a head
    that turned out otherwise (by the row version it holds)."""
    worker = _stored_worker("100000000091", "MR-W1", [[None, {"state_lgd": 9}]])
    other = _stored_worker("100000000092", "MR-W2", [[None, {"state_lgd": 9}]])
    expected = {"MR-W1": worker.head, "MR-W2": WorkerHead(other.uan, 27, 519, None)}
    with store.unit_of_work():
        uans = {"MR-W1": worker.uan, "MR-W2": other.uan}
        rows = store.lock_members(["MR-W1", "MR-W2"], uans, expected)
        inserted = {ref: row.version for ref, row in rows.items()}
        assert {ref: row.worker for ref, row in rows.items()} == expected
        store.save_workers([worker, other], rows)
        assert rows["MR-W1"].version == inserted["MR-W1"]  # as expected: not written again
        assert rows["MR-W2"].version != inserted["MR-W2"]
        assert rows["MR-W2"].worker == other.head == WorkerHead(other.uan, 9, 164, None)
        assert {ref: replace(row, created=False) for ref, row in rows.items()} == (
            store.members(["MR-W1", "MR-W2"])
        )


def test_members_inserted_by_the_lock_are_returned_as_a_read_finds_them(
    fresh_database: str,
) -> None:
    """``lock_members`` returns the rows it inserts without reading them again, and locks the
    rows another transaction inserted between its read and its insert."""
    apply_migrations(fresh_database)
    uan = "100000000093"
    with psycopg.connect(fresh_database, autocommit=False) as conn:
        store = LocatorStore(conn)
        with store.unit_of_work():
            rows = store.lock_members(["MR-N1", "MR-N2"], {"MR-N1": uan})
            assert all(row.created for row in rows.values())
            assert {ref: replace(row, created=False) for ref, row in rows.items()} == (
                store.members(["MR-N1", "MR-N2"])
            )
            assert rows["MR-N1"].uan == uan
        other = psycopg.connect(fresh_database, autocommit=False)
        try:
            other.execute("INSERT INTO members (member_ref) VALUES ('MR-R')")
            # MR-R is not there for the locked read; the insert then waits for the other one
            committer = threading.Timer(0.5, other.commit)
            committer.start()
            with store.unit_of_work():
                raced = store.lock_members(["MR-R"])["MR-R"]
                assert not raced.created
                assert raced.uan is None
                locked = conn.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid'"
                    " AND pid = pg_backend_pid() AND granted"
                ).fetchone()
            committer.join()
        finally:
            other.close()
    assert locked == (1,)  # its own transaction id: written by the row lock


def test_a_history_written_over_a_row_changed_since_it_was_read_is_refused(
    store: LocatorStore,
) -> None:
    """Histories are written by row version (ctid): a version the batch itself replaced after
    reading it must raise (the batch then rolls back), never be skipped silently."""
    with store.unit_of_work():
        store.lock_members(["adv:stale"])
    with store.unit_of_work():
        rows = store.lock_members(["adv:stale"])
        store.set_member_uans([("adv:stale", "100000000099")])  # a new row version
        add_collection(rows["adv:stale"].history, COLLECTION)
        with pytest.raises(StaleMemberRowError):
            store.save_histories(list(rows.values()))
    with store.unit_of_work():
        rows = store.lock_members(["adv:stale"])
        assert len(rows["adv:stale"].history) == 0  # nothing was written
        add_collection(rows["adv:stale"].history, COLLECTION)
        store.save_histories(list(rows.values()))
        assert len(store.lock_members(["adv:stale"])["adv:stale"].history) == 1


def test_migrations_0002_and_0003_fold_stored_observations_into_the_same_histories(
    fresh_database: str,
) -> None:
    """A database written before migration 0002 gets the histories the locator would build
    (0002 folds the observations into JSON, 0003 converts that to the stored form)."""
    apply_migrations(fresh_database, up_to=1)
    tied = replace(  # same instant, same district: the greater key is the reported shop
        COLLECTION,
        transaction_id="IMPDS-27-2024-04-0000917999",
        fps_id="FPS-27-519-0002",
        fps_location=Location(27, 519, 4002, None, "400001"),
    )
    other_district = replace(
        COLLECTION,
        transaction_id="IMPDS-27-2024-04-0000918000",
        fps_location=Location(27, 520),
        transacted_at=COLLECTION.transacted_at - timedelta(hours=5),
    )
    collections = [COLLECTION, OTP_AT_HOME, SAME_ID_OTHER_PDS, OTHER_MEMBER, tied, other_district]
    with psycopg.connect(fresh_database) as conn:
        conn.execute(
            "INSERT INTO members (member_ref) VALUES (%s), (%s)", (MEMBER_REF, "adv:other")
        )
        for c in collections:
            where = c.fps_location
            conn.execute(
                "INSERT INTO observations (source, transaction_id, member_ref, allocation_month,"
                " transacted_at, auth_mode, fps_id, state_lgd, district_lgd, subdistrict_lgd,"
                " village_town_lgd, pincode) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                (
                    c.source,
                    c.transaction_id,
                    c.member_ref,
                    c.allocation_month,
                    c.transacted_at,
                    c.auth_mode.value,
                    c.fps_id,
                    where.state_lgd,
                    where.district_lgd,
                    where.subdistrict_lgd,
                    where.village_town_lgd,
                    where.pincode,
                ),
            )
    assert apply_migrations(fresh_database)[:2] == [2, 3]
    store = LocatorStore.connect(fresh_database)
    try:
        with store.unit_of_work():
            found = store.members([MEMBER_REF, "adv:other"])
    finally:
        store.close()
    for ref in (MEMBER_REF, "adv:other"):
        expected = history_of(_observation(c) for c in collections if c.member_ref == ref)
        assert found[ref].history == expected


def test_migration_0004_puts_each_registered_members_worker_head_on_their_row(
    fresh_database: str,
) -> None:
    apply_migrations(fresh_database, up_to=3)
    rebaselined = '[[null, {"state_lgd": 9, "district_lgd": 164}], ["2024-06", {}]]'
    with psycopg.connect(fresh_database) as conn:
        conn.execute(
            "INSERT INTO members (member_ref, uan) VALUES"
            " ('MR-A', '100000000001'), ('MR-B', '100000000002'), ('MR-C', NULL),"
            " ('MR-D', '100000000004')"  # named, no worker row (inside a registry batch)
        )
        conn.execute(
            "INSERT INTO workers (uan, member_ref, registration, baselines, current_state_lgd,"
            " current_district_lgd) VALUES"
            " ('100000000001', 'MR-A', '', '[[null, {}]]', 9, 164),"
            " ('100000000002', 'MR-B', '', %s, 27, 519),"
            " ('100000000003', 'MR-C', '', '[[null, {}]]', 10, 200)",  # MR-C: deregistered
            (rebaselined,),
        )
    apply_migrations(fresh_database)
    with psycopg.connect(fresh_database) as conn:
        heads = conn.execute(
            "SELECT member_ref, worker_state_lgd, worker_district_lgd, worker_rebaseline"
            " FROM members ORDER BY member_ref"
        ).fetchall()
    assert heads == [
        ("MR-A", 9, 164, None),
        ("MR-B", 27, 519, "2024-06"),
        ("MR-C", None, None, None),
        ("MR-D", None, None, None),
    ]


def _stored_worker(uan: str, member_ref: str, baselines: list[list[Any]]) -> StoredWorker:
    return StoredWorker(
        uan=uan,
        member_ref=member_ref,
        registration=b"\xc3\x01avro",
        profile=b'{"p":[9,164,null,null,null],"r":null,"s":true}',
        baselines=baselines,
        current_state_lgd=9,
        current_district_lgd=164,
        last_address_request_at=None,
        active_event_ids=[],
    )


def test_every_write_of_a_worker_row_keeps_its_members_head(
    store: LocatorStore, fresh_database: str
) -> None:
    """The member row's worker head (migration 0004) follows the worker row through a
    registration, a derived change, a registration naming another member, a deregistration."""

    def heads() -> dict[str, Any]:
        with store.unit_of_work():
            rows = store.members(["MR-H1", "MR-H2"])
        return {ref: row.worker for ref, row in rows.items()}

    home = [[None, {"state_lgd": 9, "district_lgd": 164}]]
    worker = _stored_worker("100000000071", "MR-H1", home)
    with store.unit_of_work():
        store.lock_members(["MR-H1", "MR-H2"])
        store.set_member_uans([("MR-H1", worker.uan)])
        assert heads()["MR-H1"] is None  # named, the worker row not written yet
        store.save_workers([worker])
    assert heads() == {"MR-H1": WorkerHead(worker.uan, 9, 164, None), "MR-H2": None}
    with store.unit_of_work():
        version = store.members(["MR-H1"])["MR-H1"].version
        store.save_workers([worker])  # the same registration again: the head is unchanged
        assert store.members(["MR-H1"])["MR-H1"].version == version  # no new row version

    moved = replace(worker, current_state_lgd=27, current_district_lgd=519)
    with store.unit_of_work():
        store.update_derived([moved])
    assert heads()["MR-H1"] == WorkerHead(worker.uan, 27, 519, None)

    rebaselined = replace(moved, member_ref="MR-H2", baselines=[*home, ["2024-06", {}]])
    with store.unit_of_work():
        store.set_member_uans([("MR-H1", None), ("MR-H2", worker.uan)])
        store.save_workers([rebaselined])
    assert heads() == {"MR-H1": None, "MR-H2": WorkerHead(worker.uan, 27, 519, "2024-06")}

    with store.unit_of_work():
        store.delete_workers([(worker.uan, "MR-H2", datetime(2025, 1, 1, tzinfo=UTC))])
    assert heads() == {"MR-H1": None, "MR-H2": None}
    assert worker_heads_astray(fresh_database) == []  # no head left without its worker


def test_a_workers_derived_district_is_updated_in_place(fresh_database: str) -> None:
    """No index covers a worker's derived columns (migration 0005): a move updates the row
    on its page (a HOT update), without new index entries."""
    apply_migrations(fresh_database)
    worker = _stored_worker("100000000091", "MR-HOT", [[None, {"state_lgd": 9}]])
    with psycopg.connect(fresh_database, autocommit=False) as conn:
        store = LocatorStore(conn)
        with store.unit_of_work():
            store.lock_members([worker.member_ref], {worker.member_ref: worker.uan})
            store.save_workers([worker])
        with store.unit_of_work():
            store.update_derived([replace(worker, current_state_lgd=27, current_district_lgd=519)])
            updated = conn.execute(
                "SELECT pg_stat_get_xact_tuples_updated('workers'::regclass),"
                " pg_stat_get_xact_tuples_hot_updated('workers'::regclass)"
            ).fetchone()
    assert updated == (1, 1)


def test_every_statement_planned_on_an_empty_database_finds_rows_by_key(
    fresh_database: str,
) -> None:
    """The store's statements are planned once, at their first run: on a new database, while
    the tables are empty, and the plan stays while they grow. Each must still find its rows by
    key (an index or the row version). Plans made for empty tables read the whole table: the
    locked read compared every member row with every key of the batch (27 s for one batch at
    50,000 members), and the copy of registrations' heads to their members hashed the whole
    members index on every batch."""
    apply_migrations(fresh_database)
    conn = psycopg.connect(fresh_database, autocommit=False, options=SESSION_OPTIONS)
    conn.prepare_threshold = 0  # as LocatorStore.connect: every statement prepared at once
    store = LocatorStore(conn)
    worker = _stored_worker("100000000081", "MR-P1", [[None, {"state_lgd": 9}]])
    at = datetime(2025, 1, 1, tzinfo=UTC)
    change = StoredChange(str(uuid.UUID(int=1)), worker.uan, "MOVED", "2025-01", True, at, b"x")
    with store.unit_of_work():  # every statement of the store, each once, on empty tables
        rows = store.lock_members(["MR-P1", "MR-P2"], {"MR-P1": worker.uan})
        store.members(["MR-P1"])
        store.save_histories([rows["MR-P1"]])
        later = later_months([_later("MR-P2", "2025-01")])
        assert later is not None
        store.append_histories([("MR-P2", later)])
        store.set_member_uans([("MR-P2", None)])
        store.workers([worker.uan], lock=True)
        store.workers([worker.uan], lock=False, registration=False)
        store.save_workers([worker])
        store.update_derived([worker])
        store.record_changes([change], [change.event_id])
        store.changes([change.event_id])
        store.delete_workers([(worker.uan, "MR-P1", at)])
        store.purge_unregistered(at)
        store.delete_outbox([p.id for p in store.pending_outbox(10)])
        store.save_offsets("g", {("t", 0): 1})
    store.load_offsets("g", ["t"])
    try:
        prepared = conn.execute(
            "SELECT name, statement, cardinality(parameter_types) FROM pg_prepared_statements",
            prepare=False,
        ).fetchall()
        plans = {
            statement: "\n".join(
                line
                for (line,) in conn.execute(
                    f"EXPLAIN EXECUTE {name}({', '.join(['NULL'] * count)})".replace("()", ""),
                    prepare=False,
                )
            )
            for name, statement, count in prepared
        }
    finally:
        conn.close()
    assert len(plans) >= 17
    for statement, plan in plans.items():
        for whole_table in ("Seq Scan", "Hash", "Merge", "Bitmap"):
            assert whole_table not in plan, f"{statement}\n{plan}"


@pytest.mark.parametrize("count", [1, 3])
def test_worker_rows_round_trip_with_empty_lists_and_no_request(
    store: LocatorStore, count: int
) -> None:
    """One worker alone with no active change and no request is the edge of the packed
    parameters (a lone empty text is an empty array to string_to_array)."""
    workers = [
        StoredWorker(
            uan=f"10000000000{n}",
            member_ref=f"MR-W{n}",
            registration=b"\xc3\x01avro",
            profile=b'{"p":[9,140,null,null,null],"r":null,"s":true}',
            baselines=[[None, {"state_lgd": 9, "district_lgd": 140}]],
            current_state_lgd=9,
            current_district_lgd=140,
            last_address_request_at=None if n == 0 else datetime(2025, 5, 1, tzinfo=UTC),
            active_event_ids=[] if n == 0 else [str(uuid.UUID(int=n)), str(uuid.UUID(int=9))],
        )
        for n in range(count)
    ]
    with store.unit_of_work():
        store.save_workers(workers)
    with store.unit_of_work():
        assert list(store.workers([w.uan for w in workers], lock=False).values()) == workers
    moved = [replace(w, current_state_lgd=27, current_district_lgd=519) for w in workers]
    with store.unit_of_work():
        store.update_derived(moved)
    with store.unit_of_work():
        assert list(store.workers([w.uan for w in workers], lock=False).values()) == moved


def test_offsets_round_trip(store: LocatorStore) -> None:
    collections, registry = "t.pds.ration-collections.v1", "t.eshram.worker-registry.v1"
    offsets = {(collections, 0): 1_204, (collections, 2): 17, (registry, 1): 3}
    with store.unit_of_work():
        store.save_offsets("locator-a", offsets)
        store.save_offsets("locator-b", {(collections, 0): 5})
    assert store.load_offsets("locator-a", [collections, registry]) == offsets
    assert store.load_offsets("locator-a", [registry]) == {(registry, 1): 3}
    assert store.load_offsets("locator-b", [collections]) == {(collections, 0): 5}
    with store.unit_of_work():  # positions only move forward
        store.save_offsets("locator-a", {(collections, 0): 1_000, (collections, 2): 18})
    assert store.load_offsets("locator-a", [collections]) == {
        (collections, 0): 1_204,
        (collections, 2): 18,
    }


def test_a_row_committed_after_the_relay_read_is_not_deleted_unpublished(
    store: LocatorStore, fresh_database: str
) -> None:
    """Outbox ids are drawn at insert, not at commit: a batch that inserted first can commit
    after another batch's rows were read for publishing. Deleting the published rows must
    leave it (the relay used to delete ``id <= last published``, losing it: found by the
    bench's latency probe, 19 of 4,000 moves never published)."""
    early, late = OutboxRow("t.out", b"early", b"1"), OutboxRow("t.out", b"late", b"2")
    other = LocatorStore.connect(fresh_database)
    try:
        with other.unit_of_work():
            other.enqueue([early])  # the smaller id, not committed yet
            with store.unit_of_work():
                store.enqueue([late])
            with store.unit_of_work():
                pending = store.pending_outbox(10)
                assert [item.row for item in pending] == [late]
                published = [item.id for item in pending]
        with store.unit_of_work():  # the early batch committed meanwhile
            store.delete_outbox(published)
        with store.unit_of_work():
            assert [item.row for item in store.pending_outbox(10)] == [early]
    finally:
        other.close()


def test_outbox_round_trip(store: LocatorStore, settings: Settings) -> None:
    codec = AvroCodec(SchemaCatalog.load(settings.avro_dir))
    rows = [
        OutboxRow("t.eshram.location-changes.v1", UAN.encode(), codec.encode(*to_avro(MOVED))),
        OutboxRow(
            "t.pds.ration-collections.v1.dlq",
            MEMBER_REF.encode(),
            b"\xc3\x01not avro",
            (
                ("traceparent", b"00-4bf92f3577b34da6-00f067aa0ba902b7-01"),
                ("error.class", b"wrong_magic"),
                ("empty", b""),
                ("binary", bytes(range(256))),
            ),
        ),
        OutboxRow("t.eshram.worker-registry.v1.dlq", None, None),
    ]
    with store.unit_of_work():
        store.enqueue(rows)
    with store.unit_of_work():
        pending = store.pending_outbox(10)
    assert [item.row for item in pending] == rows
    ids = [item.id for item in pending]
    assert ids == sorted(set(ids))
    with store.unit_of_work():
        assert [item.row for item in store.pending_outbox(2)] == rows[:2]
        store.delete_outbox(ids[:2])
        assert [item.row for item in store.pending_outbox(10)] == rows[2:]
        store.delete_outbox(ids[2:])
        assert store.pending_outbox(10) == []
