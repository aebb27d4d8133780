"""India's states and union territories by LGD code, with e-Shram registration weights.

Pure data. The 36 current states and UTs (LGD codes 1-38 less 25 and 26, which merged into 38
in 2020). ``eshram_share`` approximates each one's share of e-Shram registrations (percent,
rounded; the registry's public dashboard ranks Uttar Pradesh, Bihar and West Bengal first); the
simulator draws home states from it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class State:
    lgd: int
    name: str
    eshram_share: float

    @property
    def code(self) -> str:
        """Two-digit code used in topic names: 9 -> '09'."""
        return f"{self.lgd:02d}"


STATES: tuple[State, ...] = (
    State(1, "Jammu and Kashmir", 1.1),
    State(2, "Himachal Pradesh", 0.6),
    State(3, "Punjab", 1.8),
    State(4, "Chandigarh", 0.1),
    State(5, "Uttarakhand", 1.0),
    State(6, "Haryana", 1.8),
    State(7, "Delhi", 1.1),
    State(8, "Rajasthan", 4.4),
    State(9, "Uttar Pradesh", 27.5),
    State(10, "Bihar", 9.6),
    State(11, "Sikkim", 0.05),
    State(12, "Arunachal Pradesh", 0.05),
    State(13, "Nagaland", 0.1),
    State(14, "Manipur", 0.3),
    State(15, "Mizoram", 0.05),
    State(16, "Tripura", 0.3),
    State(17, "Meghalaya", 0.1),
    State(18, "Assam", 2.3),
    State(19, "West Bengal", 8.7),
    State(20, "Jharkhand", 3.3),
    State(21, "Odisha", 4.5),
    State(22, "Chhattisgarh", 2.8),
    State(23, "Madhya Pradesh", 6.0),
    State(24, "Gujarat", 3.4),
    State(27, "Maharashtra", 4.9),
    State(28, "Andhra Pradesh", 2.7),
    State(29, "Karnataka", 1.4),
    State(30, "Goa", 0.05),
    State(31, "Lakshadweep", 0.01),
    State(32, "Kerala", 2.0),
    State(33, "Tamil Nadu", 2.9),
    State(34, "Puducherry", 0.1),
    State(35, "Andaman and Nicobar Islands", 0.02),
    State(36, "Telangana", 1.5),
    State(37, "Ladakh", 0.02),
    State(38, "Dadra and Nagar Haveli and Daman and Diu", 0.05),
)

STATES_BY_LGD: dict[int, State] = {state.lgd: state for state in STATES}


def is_state_lgd(code: int) -> bool:
    return code in STATES_BY_LGD
