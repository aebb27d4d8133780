"""The streams worker against the real broker: each change reaches exactly the right state
topics, consent is respected and updates take effect for the next change, a change read before
its registration is held, bad records go to the DLQ, and the API enforces each state's view."""

from __future__ import annotations

from pathlib import Path

import pytest

from eshram_locator import bootstrap
from eshram_locator.domain.model import Location
from tests.integration.conftest import Pipeline
from tests.integration.test_streams_support import (
    TOKENS,
    StreamsWorker,
    TopicReader,
    moved,
    produce_changes,
    produce_registrations,
    registration,
    streams_topics,
    wait_until,
)

pytestmark = pytest.mark.integration
__all__ = ["streams_topics"]  # the fixture, imported to be used here

UP, UP_2 = Location(9, 901, 90101, None, "221001"), Location(9, 902)
BIHAR = Location(10, 1001)
WEST_BENGAL = Location(19, 1901)
DELHI = Location(7, 701)
MUMBAI = Location(27, 2701, 270101)
GUJARAT = Location(24, 2401)
KARNATAKA = Location(29, 2901)

W1, W2, W3, W4, W5 = (f"10000000000{n}" for n in range(1, 6))


def routed(reader: TopicReader, pipeline: Pipeline) -> dict[str, set[int]]:
    """event_id -> the states whose topic carried it."""
    out: dict[str, set[int]] = {}
    for topic, _, value, _ in reader.messages:
        if ".state." not in topic or value is None:
            continue
        _, datum = pipeline.codec.decode(value, "LocationChanged")
        out.setdefault(str(datum["event_id"]), set()).add(int(topic.rsplit(".", 1)[1]))
    return out


def test_fan_out_consent_hold_dlq_and_api(
    pipeline: Pipeline, streams_topics: list[str], tmp_path: Path
) -> None:
    produce_registrations(
        pipeline,
        registration(W1, UP, True),
        registration(W2, UP, False),
        registration(W3, BIHAR, True),
        registration(W5, UP, True),
    )
    c1 = moved(W1, UP, UP, MUMBAI, "2025-03")
    c2a = moved(W2, UP, UP, DELHI, "2025-03")
    c3 = moved(W3, BIHAR, BIHAR, DELHI, "2025-03")
    c4 = moved(W4, WEST_BENGAL, WEST_BENGAL, KARNATAKA, "2025-03")  # registered later
    c5a = moved(W5, UP, UP, GUJARAT, "2025-03")
    c6 = moved(W1, UP, MUMBAI, UP_2, "2025-05")  # within the home state: home state only
    produce_changes(pipeline, c1, c2a, c3, c4, c5a, c6)
    producer = pipeline.producer()
    producer.produce(pipeline.names.location_changes, b"not avro at all", W1.encode())
    assert producer.flush(30) == 0

    reader = TopicReader(
        pipeline.endpoints.bootstrap_servers,
        [*streams_topics, pipeline.names.location_changes + ".dlq"],
    )
    worker = StreamsWorker(pipeline, tmp_path / "data", tmp_path / "streams.log")
    try:
        expected: dict[str, set[int]] = {
            c1.event_id: {9, 27},
            c3.event_id: {10, 7},
            c5a.event_id: {9, 24},
            c6.event_id: {9, 27},
        }
        wait_until(
            lambda: all(routed(reader, pipeline).get(e) == s for e, s in expected.items()),
            90,
            "the first changes on their state topics",
            tick=reader.poll,
        )
        assert c4.event_id not in routed(reader, pipeline)  # held: registration not seen

        produce_registrations(pipeline, registration(W4, WEST_BENGAL, True))
        expected[c4.event_id] = {19, 29}
        wait_until(
            lambda: routed(reader, pipeline).get(c4.event_id) == {19, 29},
            60,
            "the held change to be released",
            tick=reader.poll,
        )

        # Consent updates: W2 gives consent, W5 withdraws it; the API shows when applied.
        produce_registrations(pipeline, registration(W2, UP, True), registration(W5, UP, False))
        wait_until(
            lambda: (
                worker_status(worker, W2, "09") == 200 and worker_status(worker, W5, "09") == 404
            ),
            60,
            "the consent updates",
        )
        c2b = moved(W2, UP, DELHI, MUMBAI, "2025-06")
        c5b = moved(W5, UP, GUJARAT, MUMBAI, "2025-06")
        produce_changes(pipeline, c2b, c5b)
        expected[c2b.event_id] = {9, 7, 27}
        wait_until(
            lambda: routed(reader, pipeline).get(c2b.event_id) == {9, 7, 27},
            60,
            "the change after consent",
            tick=reader.poll,
        )
        reader.poll(3)  # anything else would have arrived by now
        assert routed(reader, pipeline) == expected  # c2a and c5b: nowhere

        # Every state topic carries only its own; state 10 gets state granularity.
        for topic, _, value, _ in reader.messages:
            if topic == pipeline.names.state(10):
                _, datum = pipeline.codec.decode(value or b"", "LocationChanged")
                assert datum["current_location"]["district_lgd"] == 0
                assert datum["evidence"]["fps_ids"] == []

        dead = [m for m in reader.messages if m[0].endswith(".dlq")]
        assert len(dead) == 1
        assert dead[0][2] == b"not avro at all"
        headers = dict(dead[0][3])
        assert headers["error.class"] == b"wrong_magic"
        assert headers["source.topic"] == pipeline.names.location_changes.encode()

        # API: 09 never saw W3 (Bihar -> Delhi): 404 like an unknown uan; 10 does.
        assert worker_status(worker, W3, "09") == 404
        assert worker_status(worker, "999999999999", "09") == 404
        assert worker_status(worker, W3, "10") == 200
        assert api_status(worker, f"/v1/workers/{W3}", None) == 401
        assert api_status(worker, f"/v1/workers/{W3}", "wrong-token-0000000") == 401
        assert api_status(worker, "/v1/districts/9/901/workers", TOKENS["27"]) == 403
        _, page = api(worker, "/v1/districts/27/2701/workers", TOKENS["27"])
        assert [w["uan"] for w in page["workers"]] == [W2]  # W5 withdrew consent; W1 moved on
        _, flows = api(worker, "/v1/flows/2025-03", TOKENS["09"])
        assert sum(f["moves_in"] for f in flows["flows"]) == 5  # c1, c2a, c3, c4, c5a
    finally:
        worker.stop()
        reader.close()

    # The reference subscriber of Maharashtra reads what the fan-out published.
    subscriber = bootstrap.state_subscriber(
        pipeline.settings, pipeline.endpoints, 27, idle_exit_polls=4
    )
    totals = subscriber.run()
    assert totals.applied == 3  # c1, c6 (W1 left for UP), c2b
    assert totals.rejected == 0


def api(worker: StreamsWorker, path: str, token: str | None) -> tuple[int, object]:
    from tests.integration.test_streams_support import api_get

    return api_get(worker.port, path, token)


def api_status(worker: StreamsWorker, path: str, token: str | None) -> int:
    return api(worker, path, token)[0]


def worker_status(worker: StreamsWorker, uan: str, state: str) -> int:
    return api_status(worker, f"/v1/workers/{uan}", TOKENS[state])
