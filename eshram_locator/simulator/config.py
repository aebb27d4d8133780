"""Configuration of the population simulator: the behaviours and their shares."""

from __future__ import annotations

from dataclasses import dataclass, fields

from eshram_locator.domain.months import is_month

# Primary behaviours: every worker has exactly one.
NON_MIGRANT = "non_migrant"
INTER_DISTRICT_MOVE = "inter_district_move"
INTER_STATE_MOVE = "inter_state_move"
SEASONAL = "seasonal"
SETTLED_MIGRANT = "settled_migrant"
RETURN_MIGRANT = "return_migrant"
DEREGISTERED = "deregistered"
BEHAVIOURS = (
    NON_MIGRANT,
    INTER_DISTRICT_MOVE,
    INTER_STATE_MOVE,
    SEASONAL,
    SETTLED_MIGRANT,
    RETURN_MIGRANT,
    DEREGISTERED,
)


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    """Everything that shapes a simulation. Shares are probabilities in [0, 1].

    The primary-behaviour shares (``*_move_share``, ``seasonal_share``, ``settled_migrant_share``,
    ``return_migrant_share``, ``deregistered_share``) are shares of workers and must sum to at
    most 1; the rest are non-migrants. ``*_per_month`` shares apply to each worker-month,
    ``*_share`` overlays to each worker unless said otherwise.
    """

    seed: int = 7
    workers: int = 20_000
    months: int = 12
    start_month: str = "2025-04"
    # --- primary behaviours (shares of workers) ---
    inter_district_move_share: float = 0.05
    inter_state_move_share: float = 0.08
    seasonal_share: float = 0.07
    settled_migrant_share: float = 0.05
    return_migrant_share: float = 0.03
    deregistered_share: float = 0.01
    # --- overlays ---
    one_month_trip_share: float = 0.05  # workers with one month's presence elsewhere
    split_move_month_share: float = 0.25  # moves whose month has a lift at both ends
    missing_month_per_month: float = 0.06  # the worker lifts nothing that month
    household_lift_away_per_month: float = 0.6  # a member lifts at home while the worker is away
    own_otp_away_per_month: float = 0.15  # else the worker's OTP/MANUAL at home while away
    household_lift_home_per_month: float = 0.08  # a member lifts instead of the worker at home
    biometric_fallback_per_month: float = 0.03  # the worker at home authenticates by OTP/MANUAL
    manual_share: float = 0.25  # of the worker's non-biometric transactions
    iris_share: float = 0.05  # of biometric transactions (the rest FINGERPRINT or FACE)
    face_share: float = 0.03
    shop_switch_per_month: float = 0.05  # another shop in the same district
    spill_into_next_month: float = 0.03  # transacted in the first days of the next month
    duplicate_share: float = 0.01  # of transactions: emitted twice, identical
    late_share: float = 0.015  # of transactions: emitted 2-5 months late or at the very end
    late_to_end_share: float = 0.3  # of late transactions: at the very end of the stream
    late_registration_share: float = 0.03  # registration arrives 1-2 months after collections
    registry_update_share: float = 0.06  # an SMS-reachability or consent flip
    address_correction_share: float = 0.01  # a new present address in the same district
    mover_address_update_share: float = 0.1  # of confirmed permanent moves: registry catches up
    present_equals_permanent_share: float = 0.2  # present address filled in, same as permanent
    consent_share: float = 0.92
    sms_reachable_share: float = 0.85
    # --- the Aadhaar guard's test input (leaks.py); 0 in a normal simulation ---
    aadhaar_injection_rate: float = 0.0  # of records: a raw Aadhaar-like number in a field
    # --- rule numbers the ground truth assumes (rules.md defaults) ---
    confirm_months: int = 2
    max_gap_months: int = 3
    # --- synthetic map ---
    shops_per_district: int = 12

    def __post_init__(self) -> None:
        if not is_month(self.start_month):
            raise ValueError(f"start_month is not YYYY-MM: {self.start_month!r}")
        if self.workers < 0 or self.months < 1:
            raise ValueError("workers must be >= 0 and months >= 1")
        if self.confirm_months < 1 or self.max_gap_months < 0 or self.shops_per_district < 1:
            raise ValueError("confirm_months >= 1, max_gap_months >= 0, shops_per_district >= 1")
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, float) and not 0.0 <= value <= 1.0:
                raise ValueError(f"{item.name} must be in [0, 1], got {value}")
        if sum(self.behaviour_shares().values()) > 1.0 + 1e-9:
            raise ValueError("primary behaviour shares sum to more than 1")

    def behaviour_shares(self) -> dict[str, float]:
        """Shares of the migrant and deregistered behaviours (non-migrants are the rest)."""
        return {
            INTER_DISTRICT_MOVE: self.inter_district_move_share,
            INTER_STATE_MOVE: self.inter_state_move_share,
            SEASONAL: self.seasonal_share,
            SETTLED_MIGRANT: self.settled_migrant_share,
            RETURN_MIGRANT: self.return_migrant_share,
            DEREGISTERED: self.deregistered_share,
        }
