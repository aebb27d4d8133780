"""Migration flows: the definitions, and that replays neither lose nor double count."""

from __future__ import annotations

from datetime import UTC, datetime

from eshram_locator.domain.model import (
    ChangeType,
    District,
    Evidence,
    Location,
    LocationChanged,
    Migration,
)
from eshram_locator.domain.rules import location_event_id, retraction
from streams.flows import (
    Counts,
    PairLedger,
    PartitionFlows,
    contributions,
    flow_key,
    pairs_to_send,
    parse_pair,
    partials_from_json,
    partials_to_json,
    touched_pairs,
)
from streams.routing import SharingProfile
from streams.worker_view import WorkerView

HOME = Location(9, 901)
MUMBAI = Location(27, 2701)
PUNE = Location(27, 2702)
A, B, C = HOME.district, MUMBAI.district, PUNE.district


def moved(uan: str, month: str, previous: Location, current: Location) -> LocationChanged:
    kind = ChangeType.RETURNED_HOME if current == HOME else ChangeType.MOVED
    return LocationChanged(
        event_id=location_event_id(uan, month, current.district, kind),
        change_type=kind,
        uan=uan,
        previous_location=previous,
        current_location=current,
        effective_month=month,
        detected_at=datetime(2025, 6, 1, tzinfo=UTC),
        migration=Migration.INTER_STATE,
        home_state_lgd=9,
        evidence=Evidence(2, 2, month, month, ()),
        confidence=1.0,
        present_address_matches=False,
        supersedes_event_id=None,
    )


def worker(uan: str, *events: LocationChanged, partition: int = 0) -> WorkerView:
    view = WorkerView(uan, partition).registered(SharingProfile(True, 9), A)
    for event in events:
        view = view.with_change(event)
    return view


def test_one_move_is_one_worker_and_one_move_in() -> None:
    view = worker("100000000001", moved("100000000001", "2025-03", HOME, MUMBAI))
    assert contributions(view) == {("2025-03", A, B): Counts(1, 1)}


def test_a_second_move_leaves_the_first_destination() -> None:
    uan = "100000000001"
    view = worker(uan, moved(uan, "2025-03", HOME, MUMBAI), moved(uan, "2025-06", MUMBAI, PUNE))
    assert contributions(view) == {
        ("2025-03", A, B): Counts(1, 1),
        ("2025-06", A, B): Counts(-1, 0),
        ("2025-06", A, C): Counts(1, 1),
    }


def test_retracted_change_contributes_nothing() -> None:
    uan = "100000000001"
    first = moved(uan, "2025-03", HOME, MUMBAI)
    view = worker(uan, first, retraction(first, datetime(2025, 7, 1, tzinfo=UTC)))
    assert contributions(view) == {}


def test_no_registration_no_contribution() -> None:
    uan = "100000000001"
    view = WorkerView(uan, 0).with_change(moved(uan, "2025-03", HOME, MUMBAI))
    assert contributions(view) == {}
    assert contributions(None) == {}


def test_applying_a_change_twice_changes_nothing() -> None:
    uan = "100000000001"
    event = moved(uan, "2025-03", HOME, MUMBAI)
    once = worker(uan, event)
    assert once.with_change(event) == once
    assert contributions(once.with_change(event)) == contributions(once)


def ledger_figures(
    views: list[WorkerView],
) -> dict[str, dict[tuple[District, District], tuple[int, int]]]:
    flows = PartitionFlows()
    flows.rebuild(views)
    pairs = {pair for view in views for pair in touched_pairs(contributions(view))}
    out: dict[str, dict[tuple[District, District], tuple[int, int]]] = {}
    ledgers: dict[tuple[District, District], PairLedger] = {}
    for partition in sorted({view.partition for view in views}):
        for pair, months in flows.partials(partition, pairs).items():
            ledgers[pair] = ledgers.get(pair, PairLedger()).with_partials(partition, months)
    for pair, ledger in ledgers.items():
        for month, figures in ledger.figures().items():
            out.setdefault(month, {})[pair] = figures
    return out


def test_stock_carries_over_months_and_partitions() -> None:
    one, two = "100000000001", "100000000002"
    views = [
        worker(one, moved(one, "2025-03", HOME, MUMBAI), partition=0),
        worker(
            two,
            moved(two, "2025-05", HOME, MUMBAI),
            moved(two, "2025-08", MUMBAI, PUNE),
            partition=1,
        ),
    ]
    figures = ledger_figures(views)
    assert figures["2025-03"][(A, B)] == (1, 1)
    assert figures["2025-05"][(A, B)] == (2, 1)
    assert figures["2025-08"][(A, B)] == (1, 0)
    assert figures["2025-08"][(A, C)] == (1, 1)


def test_ledger_takes_absolute_partials_so_resending_is_harmless() -> None:
    pair = (A, B)
    ledger = PairLedger().with_partials(0, {"2025-03": Counts(2, 2)})
    ledger, first = ledger.publish(pair)
    assert [(f.workers, f.moves_in) for f in first] == [(2, 2)]
    again, second = ledger.with_partials(0, {"2025-03": Counts(2, 2)}).publish(pair)
    assert second == []  # the same partials again: nothing changed, nothing published
    other, third = again.with_partials(1, {"2025-03": Counts(1, 1)}).publish(pair)
    assert [(f.workers, f.moves_in) for f in third] == [(3, 3)]
    gone, fourth = other.with_partials(0, {}).publish(pair)
    assert [(f.workers, f.moves_in) for f in fourth] == [(1, 1)]
    assert PairLedger.from_json(gone.to_json()) == gone


def test_a_replayed_retraction_resends_the_pair_it_emptied() -> None:
    """A crash after the retraction's view was stored, before its partials were sent: the
    replay finds the retraction already applied, yet the emptied pair's ledger is repaired."""
    uan = "100000000001"
    first = moved(uan, "2025-03", HOME, MUMBAI)
    undo = retraction(first, datetime(2025, 7, 1, tzinfo=UTC))
    moved_view = worker(uan, first)
    flows = PartitionFlows()
    flows.rebuild([moved_view])
    sent = flows.partials(0, [(A, B)])[(A, B)]
    ledger, published = PairLedger().with_partials(0, sent).publish((A, B))
    assert [(f.workers, f.moves_in) for f in published] == [(1, 1)]

    # Before the crash: the retraction is applied and its view stored; its partials are lost.
    stored = moved_view.with_change(undo)
    flows.apply(0, contributions(moved_view), contributions(stored))

    # The replay: the stored view already holds the retraction, so nothing changes ...
    replayed = stored.with_change(undo)
    before, after = contributions(stored), contributions(replayed)
    assert before == after == {}
    assert touched_pairs(before, after) == set()  # ... and the worker no longer touches (A, B)
    # ... but the retraction names it, so its (now empty) partials are sent again.
    pairs = pairs_to_send(before, after, replayed.origin, undo)
    assert pairs == {(A, A), (A, B)}
    months = flows.partials(0, pairs)[(A, B)]
    assert months == {}
    _, repaired = ledger.with_partials(0, months).publish((A, B))
    assert [(f.month, f.workers, f.moves_in) for f in repaired] == [("2025-03", 0, 0)]


def test_a_change_without_a_known_origin_names_no_pair() -> None:
    uan = "100000000001"
    event = moved(uan, "2025-03", HOME, MUMBAI)
    assert pairs_to_send({}, {}, None, event) == set()
    assert pairs_to_send({}, {}, A, None) == set()


def test_partition_flows_apply_then_undo_is_empty() -> None:
    uan = "100000000001"
    view = worker(uan, moved(uan, "2025-03", HOME, MUMBAI))
    flows = PartitionFlows()
    flows.apply(0, {}, contributions(view))
    flows.apply(0, contributions(view), {})
    assert flows.cells == {0: {}}


def test_keys_and_messages_round_trip() -> None:
    assert flow_key("2025-03", (A, B)) == "2025-03:09-901:27-2701"
    assert parse_pair("09-901:27-2701") == (A, B)
    message = partials_to_json(3, {"2025-03": Counts(1, 2)})
    assert partials_from_json(message) == (3, {"2025-03": Counts(1, 2)})
