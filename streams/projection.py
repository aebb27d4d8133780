"""What each state receives of a ``LocationChanged``: a per-state projection. Pure.

The output stays a valid ``LocationChanged`` (same schema, so one codec and one contract):

- granularity ``district`` (default): locations keep ``state_lgd`` and ``district_lgd`` only
  (``subdistrict_lgd``, ``village_town_lgd`` and ``pincode`` become null) and
  ``evidence.fps_ids`` is emptied, since a Fair Price Shop id pins a village;
- granularity ``state``: as ``district``, and ``district_lgd`` becomes ``0`` (LGD codes are
  positive, so 0 unambiguously means "withheld"; the schema only says ``int``);
- ``withheld_fields``: ``previous_location`` becomes null; ``evidence`` becomes an empty
  evidence (0 months, 0 transactions, first and last month = the effective month, no shops).

Fields a consumer cannot act without (ids, change type, uan, current location, months,
migration class, home state, ``supersedes_event_id``, rule version) are always sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

WITHHELD_DISTRICT: Final = 0
"""``district_lgd`` of a location projected to state granularity."""


class Granularity(StrEnum):
    DISTRICT = "district"
    STATE = "state"


class WithholdableField(StrEnum):
    PREVIOUS_LOCATION = "previous_location"
    EVIDENCE = "evidence"


@dataclass(frozen=True, slots=True)
class StateProjection:
    granularity: Granularity = Granularity.DISTRICT
    withheld_fields: frozenset[WithholdableField] = field(default_factory=frozenset)


DEFAULT_PROJECTION: Final = StateProjection()


def project_location(location: dict[str, Any] | None, granularity: Granularity) -> Any:
    """A fastavro Location dict at the given granularity (None stays None)."""
    if location is None:
        return None
    district = location["district_lgd"] if granularity is Granularity.DISTRICT else 0
    return {
        "state_lgd": location["state_lgd"],
        "district_lgd": district,
        "subdistrict_lgd": None,
        "village_town_lgd": None,
        "pincode": None,
    }


def project_change(datum: dict[str, Any], projection: StateProjection) -> dict[str, Any]:
    """The fastavro ``LocationChanged`` dict a state with ``projection`` receives (a copy)."""
    out = dict(datum)
    granularity = projection.granularity
    out["current_location"] = project_location(datum["current_location"], granularity)
    if WithholdableField.PREVIOUS_LOCATION in projection.withheld_fields:
        out["previous_location"] = None
    else:
        out["previous_location"] = project_location(datum["previous_location"], granularity)
    if WithholdableField.EVIDENCE in projection.withheld_fields:
        month = datum["effective_month"]
        out["evidence"] = {
            "months_observed": 0,
            "transactions": 0,
            "first_month": month,
            "last_month": month,
            "fps_ids": [],
        }
    else:
        out["evidence"] = dict(datum["evidence"]) | {"fps_ids": []}
    return out
