"""The location rules of ``shared/design/rules.md`` (rule_version "v1") as a pure core.

No I/O: the Kafka consumer and the PostgreSQL store load a worker's profile, observations and
already-published changes, call the functions here, and write what they return. Everything is a
function of its arguments, so the same inputs always give the same answer (rules 7 and 8).

How each rule is read here (numbers as in rules.md):

1. **Presence evidence.** An ``Observation`` is one of the worker's *own* transactions (the
   caller joins ``member_ref``). It is *presence* when ``auth_mode.is_biometric`` (FINGERPRINT,
   IRIS, FACE). OTP and MANUAL transactions are counted in ``Evidence.transactions`` but never
   set a monthly location, so they never move anyone. Collections by other members of the card
   are not observations: the caller does not pass them.
2. **Granularity.** Locations are compared by ``Location.district`` = (state_lgd, district_lgd)
   only; a new shop, sub-district, village or pincode in the same district is never a change.
3. **Monthly location.** For each allocation month with at least one presence transaction: the
   district of the latest presence transaction by ``transacted_at``. Ties on that timestamp
   between districts: the district with more presence transactions in the month; then the
   smallest (state_lgd, district_lgd), so the answer never depends on input order. The full
   ``Location`` reported for a change is the ``fps_location`` of the latest presence transaction
   in the new district within the confirming months (ties on the timestamp: the greatest
   ``transaction_id``).
4. **Baseline.** ``present_address`` when registered, else ``permanent_address``: the first
   entry of the profile's ``baselines``. Re-baselines (rule 11) add entries that take effect
   from their month.
5. **Confirmation.** Observed months (months with presence) are walked in order; at the month
   of a re-baseline the current location becomes the re-registered baseline and the streak
   starts afresh. A *streak* is a run of consecutive
   observed months with the same monthly district; it is broken by a different district, or by
   a gap of more than ``max_gap_months`` months without presence between two observed months
   (the gap between 2024-01 and 2024-05 is 3 months: equal to the default, not breaking). When a
   streak's length reaches ``confirm_months`` and its district is not the current location's
   district, the current location changes. ``effective_month`` = first month of the streak; the
   *confirming months* are the streak's first ``confirm_months`` months, the last of which is
   the *confirming month*. With ``confirm_months >= 2`` a one-month trip never moves anyone.
6. **Change types.** ``RETURNED_HOME`` when the new district is the permanent-address district,
   else ``MOVED``. ``migration`` = ``classify_migration(permanent_address, new location)``:
   other state -> INTER_STATE; same state, other district -> INTER_DISTRICT; same district ->
   INTRA_DISTRICT when both sub-district codes are known and differ (the census sense of an
   intra-district migrant), else NON_MIGRANT. ``previous_location`` is the location being left:
   the baseline for the first change, the previous change's location after that.
   ``Evidence`` describes the confirming months: ``months_observed`` = their number,
   ``transactions`` = every own transaction in them (any auth mode, any district),
   ``first_month``/``last_month`` = first and confirming month, ``fps_ids`` = the sorted distinct
   shops of those same transactions. ``present_address_matches`` = the new district is the
   registered present address's district (False when none is registered).
7. **Late and out-of-order events.** ``derive_timeline`` recomputes the whole timeline from the
   set of observations. ``reconcile`` compares it with the changes already published: a
   published change *holds* when a derived change has the same ``event_id`` (same uan,
   effective month, district and change type; a refined evidence, confidence, shop location or
   previous location does not make it a different change, and it is not re-published). Each
   published change that no longer holds is retracted, newest effective month first; then every
   derived change not yet published follows, oldest first. A ``RETRACTED`` event copies the
   retracted change
   (locations, migration, evidence, confidence, home state, so it is routed like it) and sets
   ``supersedes_event_id`` to its id; its own id is ``location_event_id(uan, effective_month,
   district, RETRACTED)``.
8. **Idempotency.** Observations are de-duplicated by ``transaction_id`` inside
   ``derive_timeline`` (should two differ, the one with the smallest content key is kept, never
   the first seen). Event ids are UUIDv5 of (uan, effective month, district, change type) in a
   fixed namespace: a replay or a recomputation with the same result gives the same ids, and
   ``reconcile`` then returns nothing.
9. **Address update requests.** For each new change, when the worker is ``sms_reachable`` and
   the change's district differs from the registered address in effect in its effective month
   (the baseline of rule 4 as rule 11's history has it: present address, else permanent;
   carried in ``registered_present_address``), unless a request
   was made less than ``address_request_cooldown_days`` before ``as_of``. The cooldown is
   measured on event time (``as_of`` = the first instant, IST, of the new change's effective
   month; the decision is taken for each new change, with its location; ``requested_at`` =
   ``as_of``), so a replay gives the same answer and the same ``request_id``
   (UUIDv5 of uan, derived district and ``as_of`` in epoch milliseconds).
10. **Sharing with states.** Routing, not decided here.
11. **Registry changes.** ``next_baselines`` keeps the worker's baseline history: a first
    registration starts it with ``(None, baseline)`` (it applies to all observations, including
    those that arrived before it); an update whose registered addresses changed at *district*
    level (rule 2: a new pincode or village in the same district changes no rule's outcome)
    appends ``(IST allocation month of updated_at, new baseline)``, taking effect from that
    month; any other update leaves it as it is. Observations are never dropped: the changes
    before a re-baseline are derived as before it, so the answer does not depend on whether the
    registry update or the collections arrive first. Tombstones are the store's business.
12. **Confidence.** ``W = confidence_window_months`` (6). Over the calendar months
    ``[confirming month - (W-1), confirming month]``, ``confidence = (observed months whose
    monthly district is the new district) / (observed months)``, rounded to 4 decimals. The
    confirming month is always observed, so the denominator is at least 1; months with no
    presence are not counted at all.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from eshram_locator.domain.history import MemberHistory, epoch_us
from eshram_locator.domain.model import (
    RULE_VERSION,
    AddressUpdateRequested,
    AuthMode,
    ChangeType,
    District,
    Evidence,
    Location,
    LocationChanged,
    Migration,
    RationCollection,
    WorkerRegistration,
)
from eshram_locator.domain.months import add_months, is_month, month_index, month_of
from eshram_locator.errors import ConfigError, ValidationError

#: Namespace of ``LocationChanged.event_id``
#: (uuid5 of URL "urn:eshram-locator:location-changed:v1").
#: Never change it: every id ever published depends on it.
LOCATION_EVENT_NAMESPACE = uuid.UUID("2b715016-77fd-52e8-b71f-889c0854ae39")
#: Namespace of ``AddressUpdateRequested.request_id``
#: (uuid5 of URL "urn:eshram-locator:address-update-requested:v1").
ADDRESS_REQUEST_NAMESPACE = uuid.UUID("befe16af-6725-5b76-92f0-6e1e41617b0d")

#: ``AddressUpdateRequested.reason`` values.
#: The registered address in effect (present, else permanent) is not where the worker is seen.
REASON_REGISTERED_ADDRESS_DIFFERS = "REGISTERED_ADDRESS_DIFFERS"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class RuleParams:
    """The configurable numbers of rules.md; changing one and replaying gives a new answer."""

    confirm_months: int = 2
    max_gap_months: int = 3
    address_request_cooldown_days: int = 90
    confidence_window_months: int = 6

    def __post_init__(self) -> None:
        if self.confirm_months < 1:
            raise ConfigError(f"confirm_months must be >= 1, got {self.confirm_months}")
        if self.max_gap_months < 0:
            raise ConfigError(f"max_gap_months must be >= 0, got {self.max_gap_months}")
        if self.address_request_cooldown_days < 0:
            raise ConfigError(
                "address_request_cooldown_days must be >= 0, "
                f"got {self.address_request_cooldown_days}"
            )
        if self.confidence_window_months < 1:
            raise ConfigError(
                f"confidence_window_months must be >= 1, got {self.confidence_window_months}"
            )


@dataclass(frozen=True, slots=True)
class Observation:
    """One of the worker's own transactions (its ``member_ref`` is the worker's)."""

    transaction_id: str
    allocation_month: str
    transacted_at: datetime
    auth_mode: AuthMode
    fps_id: str
    fps_location: Location

    def __post_init__(self) -> None:
        if not is_month(self.allocation_month):
            raise ValidationError(f"allocation_month is not YYYY-MM: {self.allocation_month!r}")
        if self.transacted_at.tzinfo is None or self.transacted_at.utcoffset() is None:
            raise ValidationError("transacted_at must be timezone-aware")

    @property
    def is_presence(self) -> bool:
        """Rule 1: only the worker's own biometric authentication proves presence."""
        return self.auth_mode.is_biometric

    @classmethod
    def from_collection(cls, collection: RationCollection) -> Observation:
        return cls(
            transaction_id=collection.transaction_id,
            allocation_month=collection.allocation_month,
            transacted_at=collection.transacted_at,
            auth_mode=collection.auth_mode,
            fps_id=collection.fps_id,
            fps_location=collection.fps_location,
        )


Baseline = tuple[str | None, Location]
"""(month from which it applies, or None for the start; the baseline location)."""


@dataclass(frozen=True, slots=True)
class WorkerProfile:
    """What the rules need to know about a registered worker."""

    uan: str
    permanent_address: Location
    present_address: Location | None
    sms_reachable: bool
    #: Rule 11: (from month, baseline) in month order; the first entry's month is None (it
    #: applies from the start). Empty: the registration's own baseline from the start.
    baselines: tuple[Baseline, ...] = ()

    def __post_init__(self) -> None:
        if self.baselines and self.baselines[0][0] is not None:
            raise ValueError("the first baseline applies from the start: its month must be None")
        months = [str(month) for month, _ in self.baselines[1:]]
        if not all(is_month(month) for month in months):
            raise ValueError(f"re-baseline months must be YYYY-MM: {months!r}")
        if months != sorted(months):
            raise ValueError(f"re-baselines must be in month order: {months!r}")

    @property
    def baseline(self) -> Location:
        """Rule 4: the registered present address, else the permanent address."""
        return self.present_address if self.present_address is not None else self.permanent_address

    @property
    def baseline_history(self) -> tuple[Baseline, ...]:
        return self.baselines or ((None, self.baseline),)

    def baseline_at(self, month: str) -> Location:
        """The baseline in effect in ``month`` (the last re-baseline at or before it)."""
        found = self.baseline_history[0][1]
        for since, location in self.baseline_history[1:]:
            if str(since) <= month:
                found = location
        return found

    @classmethod
    def from_registration(
        cls, registration: WorkerRegistration, baselines: tuple[Baseline, ...] = ()
    ) -> WorkerProfile:
        return cls(
            uan=registration.uan,
            permanent_address=registration.permanent_address,
            present_address=registration.present_address,
            sms_reachable=registration.sms_reachable,
            baselines=baselines,
        )


@dataclass(frozen=True, slots=True)
class DerivedChange:
    """A change of current location that the timeline holds."""

    event_id: str
    change_type: ChangeType
    previous_location: Location
    current_location: Location
    effective_month: str
    migration: Migration
    evidence: Evidence
    confidence: float
    present_address_matches: bool


@dataclass(frozen=True, slots=True)
class Timeline:
    """A worker's derived history: where they are now, the changes, the monthly locations."""

    current_location: Location
    changes: tuple[DerivedChange, ...]
    monthly: tuple[tuple[str, District], ...]  # (allocation month, district), observed months


# --- ids and classification -------------------------------------------------------------------


def location_event_id(
    uan: str, effective_month: str, district: District, change_type: ChangeType
) -> str:
    """Rule 8: UUIDv5 of (uan, effective month, district, change type) in a fixed namespace."""
    name = (
        f"{uan}|{effective_month}|{district.state_lgd}|{district.district_lgd}|{change_type.value}"
    )
    return str(uuid.uuid5(LOCATION_EVENT_NAMESPACE, name))


def address_request_id(uan: str, district: District, as_of: datetime) -> str:
    """Rule 9: UUIDv5 of (uan, derived district, as_of in epoch milliseconds)."""
    millis = (as_of - _EPOCH) // timedelta(milliseconds=1)
    name = f"{uan}|{district.state_lgd}|{district.district_lgd}|{millis}"
    return str(uuid.uuid5(ADDRESS_REQUEST_NAMESPACE, name))


def classify_migration(permanent: Location, current: Location) -> Migration:
    """Rule 6: the current location against the permanent address."""
    if current.state_lgd != permanent.state_lgd:
        return Migration.INTER_STATE
    if current.district_lgd != permanent.district_lgd:
        return Migration.INTER_DISTRICT
    if (
        current.subdistrict_lgd is not None
        and permanent.subdistrict_lgd is not None
        and current.subdistrict_lgd != permanent.subdistrict_lgd
    ):
        return Migration.INTRA_DISTRICT
    return Migration.NON_MIGRANT


# --- rules 1-6, 12: the timeline --------------------------------------------------------------


def _location_key(location: Location) -> tuple[int, int, int, int, str]:
    return (
        location.state_lgd,
        location.district_lgd,
        -1 if location.subdistrict_lgd is None else location.subdistrict_lgd,
        -1 if location.village_town_lgd is None else location.village_town_lgd,
        "" if location.pincode is None else location.pincode,
    )


def _content_key(
    observation: Observation,
) -> tuple[datetime, str, str, str, tuple[int, int, int, int, str]]:
    return (
        observation.transacted_at,
        observation.allocation_month,
        observation.auth_mode.value,
        observation.fps_id,
        _location_key(observation.fps_location),
    )


def _dedupe(observations: Iterable[Observation]) -> list[Observation]:
    """Rule 8: one observation per transaction_id, chosen by content, not by arrival."""
    by_id: dict[str, Observation] = {}
    for observation in observations:
        kept = by_id.get(observation.transaction_id)
        if kept is None or _content_key(observation) < _content_key(kept):
            by_id[observation.transaction_id] = observation
    return list(by_id.values())


def _confidence(
    district: District, confirming_month: str, monthly: dict[str, District], window: int
) -> float:
    """Rule 12: share of observed months in the window ending at the confirming month."""
    start = add_months(confirming_month, -(window - 1))
    in_window = [d for month, d in monthly.items() if start <= month <= confirming_month]
    return round(sum(1 for d in in_window if d == district) / len(in_window), 4)


def history_of(observations: Iterable[Observation]) -> MemberHistory:
    """Rule 8 then the month summaries: each transaction_id counted once (the smallest content)."""
    history = MemberHistory()
    for observation in _dedupe(observations):
        add_observation(history, observation)
    return history


def add_observation(history: MemberHistory, observation: Observation) -> bool:
    """``MemberHistory.add`` of one observation; False when its transaction was counted."""
    return history.add(
        observation.transaction_id,
        observation.allocation_month,
        epoch_us(observation.transacted_at),
        observation.is_presence,
        observation.fps_id,
        observation.fps_location,
    )


def derive_timeline(
    profile: WorkerProfile, observations: Iterable[Observation], params: RuleParams
) -> Timeline:
    """Rules 1-6, 8, 11, 12: the worker's timeline from the *set* of their observations."""
    return derive_from_history(profile, history_of(observations), params)


def _continues(
    streak_district: District | None,
    previous_index: int,
    district: District,
    index: int,
    params: RuleParams,
) -> bool:
    """Rule 5: an observed month continues the streak before it (same district, a gap of at
    most ``max_gap_months`` since the streak's last month)."""
    return district == streak_district and index - previous_index - 1 <= params.max_gap_months


def derive_from_history(
    profile: WorkerProfile, history: MemberHistory, params: RuleParams
) -> Timeline:
    """Rules 1-6, 11, 12 on the month summaries of the worker's observations."""
    monthly = dict(history.observed_months())  # rule 3, observed months in order

    history_of_baselines = profile.baseline_history
    current = history_of_baselines[0][1]  # rule 4
    rebaselines = list(history_of_baselines[1:])  # rule 11, in month order
    current_district = current.district
    if not rebaselines and all(district == current_district for district in monthly.values()):
        # never seen anywhere else: the common case, and no streak can move anyone
        return Timeline(current_location=current, changes=(), monthly=tuple(monthly.items()))
    permanent = profile.permanent_address
    changes: list[DerivedChange] = []
    streak: list[str] = []
    streak_district: District | None = None
    previous_index = 0
    confirm = params.confirm_months
    for month, district in monthly.items():  # rule 5
        while rebaselines and str(rebaselines[0][0]) <= month:
            current = rebaselines.pop(0)[1]
            current_district = current.district
            streak, streak_district = [], None
        index = month_index(month)
        if streak and _continues(streak_district, previous_index, district, index, params):
            streak.append(month)
        else:
            streak, streak_district = [month], district
        previous_index = index
        if len(streak) != confirm or district == current_district:
            continue

        confirming = tuple(streak)
        location = history.latest_location(district, confirming)
        change_type = (  # rule 6
            ChangeType.RETURNED_HOME if district == permanent.district else ChangeType.MOVED
        )
        transactions, fps_ids = history.transactions_in(confirming)
        evidence = Evidence(
            months_observed=len(confirming),
            transactions=transactions,
            first_month=confirming[0],
            last_month=confirming[-1],
            fps_ids=fps_ids,
        )
        change = DerivedChange(
            event_id=location_event_id(profile.uan, confirming[0], district, change_type),
            change_type=change_type,
            previous_location=current,
            current_location=location,
            effective_month=confirming[0],
            migration=classify_migration(permanent, location),
            evidence=evidence,
            confidence=_confidence(
                district, confirming[-1], monthly, params.confidence_window_months
            ),
            present_address_matches=(
                profile.present_address is not None and profile.present_address.district == district
            ),
        )
        changes.append(change)
        current = location
        current_district = district

    if rebaselines:  # re-baselines after the last observed month
        current = rebaselines[-1][1]
    return Timeline(
        current_location=current,
        changes=tuple(changes),
        monthly=tuple(monthly.items()),
    )


def may_confirm(
    history: MemberHistory,
    added: Collection[str],
    current: tuple[int, int],
    last_rebaseline: str | None,
    params: RuleParams,
) -> bool:
    """Could collections just added to ``history``, all of months after every month it had,
    confirm a move (rule 5)? ``may_move``'s answer made finer for that case, the common one.

    ``added`` = their months; ``current`` = the current district the timeline gave before;
    ``last_rebaseline`` = the month of the worker's latest re-baseline (rule 11), None if none.
    Deriving the months before them again gives what it gave before, so a new change can only
    come at one of them: where the streak of its district reaches exactly ``confirm_months``,
    away from the current district (a streak longer than that was confirmed, or was not away,
    before). False means the timeline keeps its changes and current district. True when a
    re-baseline came after the months observed before (it restarts the streaks and may change
    the current district: derive).
    """
    confirm = params.confirm_months
    # the new observed months, the one before them (the last observed), and enough before it
    # to see a streak of ``confirm`` months ending at any of them
    recent = history.recent_observed(len(added) + confirm)
    earlier = [month for month, _ in recent if month not in added]
    last_observed = earlier[0] if earlier else ""
    if last_rebaseline is not None and last_rebaseline > last_observed:
        return True
    length, previous = 0, 0
    streak_district: District | None = None
    for month, district in reversed(recent):
        if last_rebaseline is not None and month < last_rebaseline:
            continue  # the re-baseline restarted every streak at the first month after it
        index = month_index(month)
        if length and _continues(streak_district, previous, district, index, params):
            length += 1
        else:
            length, streak_district = 1, district
        previous = index
        if month in added and length == confirm and district != current:
            return True
    return False


# --- rule 7: what to publish ------------------------------------------------------------------


def _require_aware(name: str, instant: datetime) -> None:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")


def location_changed(
    profile: WorkerProfile, change: DerivedChange, detected_at: datetime
) -> LocationChanged:
    """The published record of a derived change."""
    return LocationChanged(
        event_id=change.event_id,
        change_type=change.change_type,
        uan=profile.uan,
        previous_location=change.previous_location,
        current_location=change.current_location,
        effective_month=change.effective_month,
        detected_at=detected_at,
        migration=change.migration,
        home_state_lgd=profile.permanent_address.state_lgd,
        evidence=change.evidence,
        confidence=change.confidence,
        present_address_matches=change.present_address_matches,
        supersedes_event_id=None,
        rule_version=RULE_VERSION,
    )


def retraction(change: LocationChanged, detected_at: datetime) -> LocationChanged:
    """Rule 7: the RETRACTED record of a published change that no longer holds."""
    return LocationChanged(
        event_id=location_event_id(
            change.uan,
            change.effective_month,
            change.current_location.district,
            ChangeType.RETRACTED,
        ),
        change_type=ChangeType.RETRACTED,
        uan=change.uan,
        previous_location=change.previous_location,
        current_location=change.current_location,
        effective_month=change.effective_month,
        detected_at=detected_at,
        migration=change.migration,
        home_state_lgd=change.home_state_lgd,
        evidence=change.evidence,
        confidence=change.confidence,
        present_address_matches=change.present_address_matches,
        supersedes_event_id=change.event_id,
        rule_version=RULE_VERSION,
    )


def reconcile(
    profile: WorkerProfile,
    timeline: Timeline,
    emitted: Sequence[LocationChanged],
    detected_at: datetime,
) -> list[LocationChanged]:
    """Rule 7: the events to publish now so the published changes equal the timeline's.

    ``emitted`` = this worker's published MOVED/RETURNED_HOME changes that are not retracted,
    in any order. Returns RETRACTED for each that no longer holds (newest effective month first),
    then each derived change not yet published (oldest first).
    """
    _require_aware("detected_at", detected_at)
    derived_ids = {change.event_id for change in timeline.changes}
    published: dict[str, LocationChanged] = {}
    for record in emitted:
        if record.uan != profile.uan:
            raise ValueError(f"emitted change {record.event_id} is not of worker {profile.uan}")
        if record.change_type is ChangeType.RETRACTED:
            raise ValueError(f"emitted holds a RETRACTED record: {record.event_id}")
        published[record.event_id] = record
    stale = [record for record in published.values() if record.event_id not in derived_ids]
    return reconcile_published(profile, timeline, published.keys(), stale, detected_at)


def stale_event_ids(timeline: Timeline, published_ids: Iterable[str]) -> list[str]:
    """Rule 7: the published changes (by id) that the timeline no longer holds."""
    derived_ids = {change.event_id for change in timeline.changes}
    return [event_id for event_id in published_ids if event_id not in derived_ids]


def reconcile_published(
    profile: WorkerProfile,
    timeline: Timeline,
    published_ids: Collection[str],
    stale: Sequence[LocationChanged],
    detected_at: datetime,
) -> list[LocationChanged]:
    """``reconcile`` when only the ids of the published changes are at hand, and the records
    of those that no longer hold (``stale``, from ``stale_event_ids``) have been looked up."""
    _require_aware("detected_at", detected_at)
    ordered = sorted(stale, key=lambda record: (record.effective_month, record.event_id))
    events = [retraction(record, detected_at) for record in reversed(ordered)]
    events.extend(
        location_changed(profile, change, detected_at)
        for change in timeline.changes
        if change.event_id not in published_ids
    )
    return events


# --- rule 9: address update requests ----------------------------------------------------------


def address_update_request(
    profile: WorkerProfile,
    derived: Location,
    last_requested_at: datetime | None,
    as_of: datetime,
    params: RuleParams,
) -> AddressUpdateRequested | None:
    """Rule 9: ask the worker to update their present address, at most once per cooldown.

    Decided for each new change, with ``derived`` its location and ``as_of`` event time (the
    first instant of its effective month), so the answer does not depend on how the input was
    batched. A request made less than ``address_request_cooldown_days`` before ``as_of`` (or
    after it) suppresses this one.
    """
    _require_aware("as_of", as_of)
    if not profile.sms_reachable:
        return None
    # The address the registry had when the change took effect (rule 11's history), so the
    # answer is the same whether a registry update was read before or after the collections.
    registered = profile.baseline_at(month_of(as_of))
    if derived.district == registered.district:
        return None
    if last_requested_at is not None:
        _require_aware("last_requested_at", last_requested_at)
        if as_of - last_requested_at < timedelta(days=params.address_request_cooldown_days):
            return None
    return AddressUpdateRequested(
        request_id=address_request_id(profile.uan, derived.district, as_of),
        uan=profile.uan,
        derived_location=derived,
        registered_present_address=registered,
        reason=REASON_REGISTERED_ADDRESS_DIFFERS,
        requested_at=as_of,
    )


# --- rule 11: registry changes ----------------------------------------------------------------


def _registered_districts(registration: WorkerRegistration) -> tuple[District, District | None]:
    present = registration.present_address
    return (
        registration.permanent_address.district,
        None if present is None else present.district,
    )


def next_baselines(
    old: WorkerRegistration | None,
    new: WorkerRegistration,
    baselines: tuple[Baseline, ...],
) -> tuple[Baseline, ...]:
    """Rule 11: the worker's baseline history after ``new`` replaces ``old``.

    A first registration starts it; an update whose registered addresses changed at district
    level appends (the IST allocation month of ``new.updated_at``, never earlier than the last
    entry's; the new baseline), replacing an entry of the same month; else it is unchanged.
    """
    if old is None or not baselines:
        return ((None, new.baseline),)
    if _registered_districts(old) == _registered_districts(new):
        return baselines
    month = month_of(new.updated_at)
    last_month = baselines[-1][0]
    if last_month is not None and last_month >= month:
        return (*baselines[:-1], (last_month, new.baseline))
    return (*baselines, (month, new.baseline))
