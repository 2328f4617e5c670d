"""The module interlock: oil flow lost or oil over-temperature at the module sends every board
to SAFE through the retained `leader/interlock` message, which the boards' supervisors obey.

Why it fails safe: a flow or oil reading that is missing or invalid counts as the fault it was
meant to rule out, because a stopped pump and a dead flow meter look the same from here. Why a
clear delay: a pump that stutters must not make dozens of boards ramp up and down; the interlock
sets at once and clears only after the causes have been gone for `clear_after_s`.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class InterlockState:
    active: bool
    reason: str

    def payload(self) -> dict:
        return {"active": self.active, "reason": self.reason}


class ModuleInterlock:
    def __init__(self, flow_min_l_per_min: float | None, oil_max_c: float | None,
                 hysteresis_c: float = 2.0, clear_after_s: float = 30.0):
        """A limit of None means that check is not configured (no sensor for it)."""
        self.flow_min_l_per_min = flow_min_l_per_min
        self.oil_max_c = oil_max_c
        self.hysteresis_c = hysteresis_c
        self.clear_after_s = clear_after_s
        self.state = InterlockState(False, "")
        self._clear_since_s: float | None = None
        self._kinds: tuple[str, ...] = ()

    def causes(self, flow_l_per_min: float | None,
               oil_c: float | None) -> list[tuple[str, str]]:
        """(kind, sentence) per cause present."""
        found = []
        if self.flow_min_l_per_min is not None:
            if flow_l_per_min is None:
                found.append(("flow", "module flow reading unavailable"))
            elif flow_l_per_min < self.flow_min_l_per_min:
                found.append(("flow", f"module flow {flow_l_per_min:.2f} L/min below "
                                      f"{self.flow_min_l_per_min:g} L/min"))
        if self.oil_max_c is not None:
            limit = self.oil_max_c - (self.hysteresis_c if self.state.active else 0.0)
            if oil_c is None:
                found.append(("oil", "module oil temperature unavailable"))
            elif oil_c >= limit:
                found.append(("oil", f"module oil {oil_c:.1f} C at or above {limit:g} C"))
        return found

    def update(self, now: float, flow_l_per_min: float | None,
               oil_c: float | None) -> tuple[InterlockState, bool]:
        """The interlock after this period's readings and whether it changed. The reason keeps
        the values first seen while the same causes persist, so the retained message is not
        rewritten every period."""
        causes = self.causes(flow_l_per_min, oil_c)
        previous = self.state
        if causes:
            self._clear_since_s = None
            kinds = tuple(kind for kind, _ in causes)
            if not previous.active or kinds != self._kinds:
                self.state = InterlockState(True, "; ".join(text for _, text in causes))
                self._kinds = kinds
        elif previous.active:
            if self._clear_since_s is None:
                self._clear_since_s = now
            if now - self._clear_since_s >= self.clear_after_s:
                self.state = InterlockState(False, "")
                self._clear_since_s = None
        return self.state, self.state != previous
