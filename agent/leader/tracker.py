"""What the leader knows about each of its boards: availability, restarts, lost messages, mode.

Why a separate class: availability has three sources that disagree in time (the retained
`status`, the broker's Last Will, and plain silence on `state` when a board hangs with its TCP
connection still open), and the splitter must see one answer. Restarts and gaps come from the
envelope's boot id and sequence number; they are counted, not acted on, so an operator can see a
flaky board in `leader/state` and Prometheus. The same goes for messages rejected at the door
(agent/leader/board_state.py): counted per board, with the last reason. Payloads reach the
tracker already checked; a `(boot, seq)` it has seen, or one overtaken by a newer message, is
a duplicate delivery and changes nothing.
"""

import dataclasses
from typing import Any

UNUSABLE_MODES = frozenset({"SAFE", "FAULT", "SHUTDOWN"})
"""A board in one of these draws its minimum whatever the leader says; giving it a share would
only take heat away from the boards that can deliver it."""


@dataclasses.dataclass
class BoardView:
    """One board as the leader sees it. `status` is "online", "offline", "silent" or "unknown"."""

    board: str
    status: str = "unknown"
    since_s: float | None = None
    boot: str | None = None
    restarts: int = 0
    lost_states: int = 0
    lost_events: int = 0
    last_state_seq: int | None = None
    last_event_seq: int | None = None
    last_state_s: float | None = None
    mode: str | None = None
    faults: tuple[str, ...] = ()
    state: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The last accepted state, checked field by field (agent/leader/board_state.py)."""
    rejected_states: int = 0
    rejected_events: int = 0
    rejection: str | None = None
    """Why the last rejected message was rejected."""
    rejecting: bool = False
    """The board's last message was rejected: a streak an operator has been told about."""

    def usable(self) -> bool:
        """May this board be given a share of the module budget?"""
        return (self.status == "online" and self.mode not in UNUSABLE_MODES
                and not self.faults and self.mode is not None)


class BoardTracker:
    """Per-board availability from status messages and state silence; call `check` each period."""

    def __init__(self, silence_timeout_s: float):
        self.silence_timeout_s = silence_timeout_s
        self.boards: dict[str, BoardView] = {}

    def view(self, board: str) -> BoardView:
        if board not in self.boards:
            self.boards[board] = BoardView(board)
        return self.boards[board]

    def _set_status(self, now: float, view: BoardView, status: str) -> bool:
        if view.status == status:
            return False
        view.status, view.since_s = status, now
        return True

    def on_status(self, now: float, board: str, text: str) -> bool:
        """A retained status or Last Will; True when the board's availability changed."""
        view = self.view(board)
        if text == "online":
            # A retained "online" from a board that has stopped talking is not proof of life:
            # it stays silent until a state message arrives.
            stale = view.last_state_s is not None and not self._recent(now, view)
            return self._set_status(now, view, "silent" if stale else "online")
        if text == "offline":
            return self._set_status(now, view, "offline")
        return False

    def _recent(self, now: float, view: BoardView) -> bool:
        return view.last_state_s is not None and now - view.last_state_s < self.silence_timeout_s

    def on_state(self, now: float, board: str, state: dict[str, Any]) -> list[str]:
        """A checked state message; returns notes: "restart", "gap:<n>", "late" (a duplicate
        or overtaken delivery, ignored), "online" (the board came back), "mode" (its mode or
        faults changed)."""
        view = self.view(board)
        notes = self._sequence(view, state, "state")
        if "late" in notes:
            return notes
        view.rejecting = False
        if state.get("hist"):
            return notes
        view.last_state_s = now
        view.state = state
        mode, faults = state.get("mode"), tuple(state.get("faults") or ())
        if (mode, faults) != (view.mode, view.faults):
            view.mode, view.faults = mode, faults
            notes.append("mode")
        # A live state is proof of life even after an "offline": a broker restarted with
        # persistence hands out the Last Wills it published when it stopped as retained
        # statuses, which can reach a reconnecting leader after the board's own "online".
        if view.status in ("silent", "unknown", "offline") and self._set_status(now, view,
                                                                                 "online"):
            notes.append("online")
        return notes

    def reject(self, board: str, kind: str, reason: str) -> bool:
        """Count a `state` or `event` rejected at the door; True when it starts a streak (the
        board's previous message was fine), which is worth one event, not one per message."""
        view = self.view(board)
        setattr(view, f"rejected_{kind}s", getattr(view, f"rejected_{kind}s") + 1)
        view.rejection = reason
        started = not view.rejecting
        view.rejecting = True
        return started

    def on_event(self, now: float, board: str, envelope: dict[str, Any]) -> list[str]:
        """A checked event envelope (boot, seq): counts restarts and lost events."""
        view = self.view(board)
        notes = self._sequence(view, envelope, "event")
        if "late" not in notes:
            view.rejecting = False
        return notes

    def _sequence(self, view: BoardView, payload: dict[str, Any], kind: str) -> list[str]:
        """Boot id and sequence bookkeeping; a new boot id restarts the sequence at 1."""
        notes = []
        boot, seq = payload.get("boot"), payload.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            return notes
        if boot != view.boot:
            if view.boot is not None:
                view.restarts += 1
                notes.append("restart")
            view.boot = boot
            view.last_state_seq = view.last_event_seq = None
        attribute = f"last_{kind}_seq"
        last = getattr(view, attribute)
        if last is not None and seq <= last:
            notes.append("late")
            return notes
        if last is not None and seq > last + 1:
            lost = seq - last - 1
            setattr(view, f"lost_{kind}s", getattr(view, f"lost_{kind}s") + lost)
            notes.append(f"gap:{lost}")
        setattr(view, attribute, seq)
        return notes

    def check(self, now: float) -> list[str]:
        """Boards that fell silent since the last call (online, but no state for the timeout)."""
        fell = []
        for view in self.boards.values():
            if view.status == "online" and view.last_state_s is not None and not self._recent(
                    now, view):
                self._set_status(now, view, "silent")
                fell.append(view.board)
            elif view.status == "online" and view.last_state_s is None and (
                    view.since_s is not None and now - view.since_s >= self.silence_timeout_s):
                self._set_status(now, view, "silent")
                fell.append(view.board)
        return fell

    def usable(self) -> list[BoardView]:
        return [view for view in self.boards.values() if view.usable()]
