"""Property-based fuzzing of the leader's board input (issue 13, acceptance): LeaderRole's
handlers fed Message objects as they come off the wire — arbitrary JSON, unicode with lone
surrogates, huge and tiny numbers, deep nesting, duplicated and retained deliveries, across boot
ids — with the leader ticking in between. Properties: no handler or tick raises, every payload
the leader publishes encodes (WireLink encodes as the Link does), and the ledger's totals stay
finite, never go down, and never exceed what two boards could draw at the power ceiling since
the leader started."""

import json
import math
import tempfile

from hypothesis import HealthCheck, given, settings, strategies as st, target

from agent.leader.board_state import POWER_CEILING_W
from agent.leader.ledger import ENERGY_MARGIN
from agent.persist import StateStore
from test_leader_input import Leader

BOARDS = ("b1", "b2", "leader")
"""`leader` is the leader's own level: a message under it must be ignored, not crash."""

numbers = st.one_of(st.integers(min_value=-10 ** 30, max_value=10 ** 30),
                    st.floats(allow_nan=False, allow_infinity=False),
                    st.sampled_from([1e308, -1e308, 5e-324, 0.0, -0.0, 10 ** 400, 2.0, 6.5]))
surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
texts = st.one_of(st.text(st.one_of(st.characters(exclude_categories=()), surrogates),
                          max_size=12),
                  st.sampled_from(["NORMAL", "LIMITED", "SAFE", "FAULT", "\ud800", "", "x" * 300]))
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)), max_leaves=12)

STATE_KEYS = ("mode", "faults", "min_w", "max_w", "power_w", "selected", "energy_electric_wh",
              "energy_heat_wh", "counter_reset", "hist")


@st.composite
def state_payloads(draw):
    """A state that is mostly right, with any of its fields replaced by anything."""
    payload = {"v": 1, "boot": draw(st.sampled_from(["boot-a", "boot-b", "\udc00"])),
               "seq": draw(st.one_of(st.integers(1, 6), numbers)), "ts": 0.0,
               "mode": "NORMAL", "faults": [], "min_w": 2.0, "max_w": 6.5, "power_w": 4.0,
               "energy_electric_wh": draw(st.one_of(st.floats(0.0, 50.0), numbers)),
               "energy_heat_wh": draw(st.one_of(st.floats(0.0, 50.0), numbers))}
    for key in draw(st.lists(st.sampled_from(STATE_KEYS), max_size=3)):
        payload[key] = draw(json_values)
    return payload


def raw(payload) -> bytes:
    """JSON as a sender would put it on the wire (surrogates escaped as \\udXXX, big ints and
    1e308 written out); the leader sees whatever the envelope decodes from it."""
    return json.dumps(payload, allow_nan=False).encode("ascii")


deep = st.integers(1, 5000).map(lambda depth: b'{"v":1,"boot":"a","seq":1,"faults":'
                                + b"[" * depth + b"]" * depth + b"}")
garbage = st.one_of(st.binary(max_size=64), deep, json_values.map(raw))

deliveries = st.tuples(
    st.sampled_from(BOARDS),
    st.sampled_from(["state", "state", "state", "event", "status"]),
    st.one_of(state_payloads().map(raw), garbage),
    st.booleans(),  # retained
    st.integers(1, 3),  # delivered this many times (QoS 1 redelivery, a broker replay)
    st.floats(0.0, 120.0))  # seconds before it arrives


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(deliveries, min_size=1, max_size=25))
def test_leader_survives_any_board_input(sequence):
    with tempfile.TemporaryDirectory() as directory:
        run_leader(Leader(StateStore(directory)), sequence)


def run_leader(leader: Leader, sequence) -> None:
    totals = leader.role.ledger.totals_wh()
    start_s = leader.now[0]
    for board, kind, payload, retained, copies, wait_s in sequence:
        leader.now[0] += wait_s
        for _ in range(copies):
            leader.deliver(board, kind, payload, retained)
        leader.role.react(leader.now[0])
        snapshot = leader.tick(0.5)
        now_totals = leader.role.ledger.totals_wh()
        # no board can have drawn more than the ceiling allows since the leader started
        most_wh = 2 * POWER_CEILING_W * ENERGY_MARGIN * (leader.now[0] - start_s) / 3600.0
        for kind_ in now_totals:
            assert math.isfinite(now_totals[kind_])
            assert totals[kind_] <= now_totals[kind_] <= most_wh + 1e-9
        totals = now_totals
        assert snapshot["energy_electric_wh"] == now_totals["electric"]
    target(totals["electric"], label="electric Wh counted")
    leader.role.close()
