"""Where the board's power setpoint comes from: the leader, or a local fallback when it is silent.

A setpoint offered by anyone (leader over MQTT, technician console) is validated first; a
malformed or out-of-range one is rejected with a reason and changes nothing. A local setpoint
(a technician's) overrides the leader's until it is cleared. When the leader (or the broker)
has been silent for `leader_timeout_s`, its last setpoint is held for `hold_s` more, then the
configured local fallback takes over until the leader is back.
"""

import math

from agent.safety.events import Event, EventLog


class SetpointSource:
    def __init__(self, fallback_w: float, leader_timeout_s: float, hold_s: float,
                 power_min_w: float, power_max_w: float, events: EventLog, now: float):
        self.fallback_w = fallback_w
        self.leader_timeout_s = leader_timeout_s
        self.hold_s = hold_s
        self.power_min_w = power_min_w
        self.power_max_w = power_max_w
        self.events = events
        self._leader_w: float | None = None
        self._local_w: float | None = None
        self._last_contact_s = now
        self.status = "fallback"

    def offer(self, now: float, value: object, source: str) -> tuple[bool, str]:
        """Validate and take a setpoint in watts from "leader" or "local"; (accepted, reason)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return self._reject(now, value, source, f"expected a number of watts, got "
                                f"{type(value).__name__} {value!r}")
        if not math.isfinite(value):
            return self._reject(now, value, source, f"expected a finite number, got {value!r}")
        if not self.power_min_w <= value <= self.power_max_w:
            return self._reject(now, value, source, f"{value:g} W is outside this board's "
                                f"range {self.power_min_w:g} to {self.power_max_w:g} W")
        if source == "leader":
            self._leader_w = float(value)
            self.contact(now)
        else:
            self._local_w = float(value)
        return True, f"setpoint {value:g} W from {source}"

    def clear_local(self) -> None:
        self._local_w = None

    def _reject(self, now: float, value: object, source: str, reason: str) -> tuple[bool, str]:
        self.events.record(Event(now, "setpoint_rejected", repr(value),
                                 f"setpoint from {source} rejected: {reason}", "", "warning"))
        return False, reason

    def contact(self, now: float) -> None:
        """Anything heard from the leader proves it alive."""
        self._last_contact_s = now

    def current_w(self, now: float) -> float:
        silent_s = now - self._last_contact_s
        if self._local_w is not None:
            status = "local"
        elif self._leader_w is None:
            status = "fallback"
        elif silent_s < self.leader_timeout_s:
            status = "leader"
        elif silent_s < self.leader_timeout_s + self.hold_s:
            status = "held"
        else:
            status = "fallback"
        if status != self.status:
            self.events.record(Event(now, "setpoint_source", status,
                                     f"setpoint source {self.status} -> {status} (leader silent "
                                     f"{silent_s:.0f} s)", "", "warning" if status != "leader"
                                     else "info"))
            self.status = status
        if status == "local":
            return self._local_w
        return self._leader_w if status in ("leader", "held") else self.fallback_w
