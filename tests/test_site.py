"""The site role's parts: demand from temperature or from site/demand, the split across modules
by capacity, and the site target set from Home Assistant."""

import json

import pytest

from agent.mqtt import envelope
from agent.site.demand import ExternalDemand, split_across_modules
from agent.site.law import HearthDemand
from agent.site.role import SiteRole, SiteSettings


class RecordingLink:
    def __init__(self):
        self.published = []
        self.handlers = []

    def publish(self, topic, payload, qos=0, retain=False, keep=None):
        self.published.append((topic, payload))
        return payload

    def subscribe(self, pattern, handler):
        self.handlers.append((pattern, handler))

    def deliver(self, topic, payload):
        import paho.mqtt.client as paho  # only for its topic matcher, as the Link does

        for pattern, handler in self.handlers:
            if paho.topic_matches_sub(pattern, topic):
                handler(Message(topic, payload))


class Message:
    def __init__(self, topic, payload):
        self.topic, self.payload = topic, payload

    def data(self):
        return envelope.decode(self.payload)

    def text(self):
        return self.payload.decode()


def stamped(**fields):
    return json.dumps({"v": 1, "boot": "x", "seq": 1, "ts": 0.0, **fields}).encode()


def test_split_follows_capacity_and_caps():
    split = split_across_modules(30.0, {"m1": 40.0, "m2": 20.0, "m3": 0.0})
    assert split.setpoints_w == pytest.approx({"m1": 20.0, "m2": 10.0, "m3": 0.0})
    over = split_across_modules(100.0, {"m1": 40.0, "m2": 20.0})
    assert over.setpoints_w == pytest.approx({"m1": 40.0, "m2": 20.0})
    assert over.unallocated_w == pytest.approx(40.0)


def test_temperature_demand_rises_below_target_and_is_clamped():
    demand = HearthDemand(kp_w_per_k=5.0, ki_w_per_k_s=0.5, max_step_s=30.0)
    assert demand.update(0, 45.0, 55.0, 300.0, 300.0) == pytest.approx(50.0)  # P alone first
    rising = [demand.update(t, 45.0, 55.0, 300.0, 300.0) for t in range(1, 200)]
    assert rising[0] == pytest.approx(5.0 * 10 + 0.5 * 10)
    assert all(b >= a for a, b in zip(rising, rising[1:]))
    assert rising[-1] == pytest.approx(300.0)  # clamped to what the site can deliver
    assert demand.integral_w == pytest.approx(300.0 - 50.0)  # and no further (anti-windup)
    assert demand.update(200, 56.0, 55.0, 300.0, 300.0) < 300.0  # above target: P acts at once


def test_demand_output_follows_capacity_now_but_the_integrator_the_full_capacity():
    demand = HearthDemand(kp_w_per_k=10.0, ki_w_per_k_s=1.0, max_step_s=30.0)
    demand.update(0, 54.0, 55.0, 1000.0, 1000.0)
    for t in range(10, 310, 10):
        demand.update(t, 54.0, 55.0, 1000.0, 1000.0)
    before_w = demand.update(310, 55.0, 55.0, 1000.0, 1000.0)
    assert before_w == pytest.approx(300.0)  # 30 steps of 10 s at 1 K
    for t in range(320, 620, 10):  # a module interlocked: nothing available, error zero
        assert demand.update(t, 55.0, 55.0, 0.0, 1000.0) == 0.0
    assert demand.update(620, 55.0, 55.0, 1000.0, 1000.0) == pytest.approx(before_w)


def test_external_demand_expires_and_rejects_nonsense():
    external = ExternalDemand(timeout_s=60)
    assert not external.offer(0, -5) and not external.offer(0, float("nan"))
    assert not external.offer(0, True)
    assert external.offer(0, 250.0)
    assert external.current_w(59) == 250.0
    assert external.current_w(61) is None


def test_site_role_budgets_modules_and_skips_interlocked():
    now = [0.0]
    link = RecordingLink()
    role = SiteRole("s1", link, lambda: now[0], SiteSettings())
    role.start()
    base = "hearth/v1/s1"
    link.deliver(f"{base}/m1/leader/state", stamped(capacity_w=40.0, power_w=10.0,
                                                    interlock={"active": False, "reason": ""}))
    link.deliver(f"{base}/m2/leader/state", stamped(capacity_w=40.0, power_w=5.0,
                                                    interlock={"active": True, "reason": "flow"}))
    link.deliver(f"{base}/site/demand", stamped(demand_w=30.0))
    role.tick(now[0])
    budgets = {t.split("/")[3]: p["budget_w"] for t, p in link.published
               if t.endswith("/leader/budget")}
    assert budgets == {"m1": 30.0, "m2": 0.0}
    state = role.snapshot
    assert state["demand_source"] == "external" and state["power_w"] == 15.0
    assert state["modules_available"] == 1
    now[0] = 200.0  # demand expired, leaders silent: nothing is asked of anyone
    role.tick(now[0])
    assert role.snapshot["demand_w"] == 0.0 and role.snapshot["capacity_w"] == 0.0


def test_site_target_from_home_assistant_is_bounded():
    link = RecordingLink()
    role = SiteRole("s1", link, lambda: 0.0, SiteSettings(target_c=55.0))
    role.start()
    link.deliver("hearth/v1/s1/site/target/set", b"60.5")
    assert role.target_c == 60.5
    for bad in (b"90", b"hot", b"nan"):
        link.deliver("hearth/v1/s1/site/target/set", bad)
    assert role.target_c == 60.5 and role.rejected_messages == 3


def module_state(capacity_w, **fields):
    return stamped(capacity_w=capacity_w, interlock={"active": False, "reason": ""}, **fields)


def budget_of(link, module):
    return [p["budget_w"] for t, p in link.published if t.endswith(f"/{module}/leader/budget")][-1]


def test_site_demand_is_continuous_across_five_minutes_without_capacity():
    """Issue 15: the leader gone for 5 minutes must not restart the site's demand from 0 W."""
    now, loop_c = [0.0], [54.0]
    link = RecordingLink()
    role = SiteRole("s1", link, lambda: now[0], SiteSettings(
        period_s=10.0, target_c=55.0, kp_w_per_k=10.0, ki_w_per_k_s=1.0),
        read_loop_c=lambda: loop_c[0])
    role.start()
    for step in range(40):  # below target for 400 s: the integrator builds up
        if step == 30:
            loop_c[0] = 55.0  # at target: the integrator alone carries the load
        link.deliver("hearth/v1/s1/m1/leader/state", module_state(1000.0))
        now[0] = step * 10.0
        role.tick(now[0])
    before_w = budget_of(link, "m1")
    assert 200.0 < before_w < 1000.0
    for step in range(40, 70):  # the leader silent for 5 minutes
        now[0] = step * 10.0
        role.tick(now[0])
    assert budget_of(link, "m1") == 0.0
    link.deliver("hearth/v1/s1/m1/leader/state", module_state(1000.0))
    now[0] = 700.0
    role.tick(now[0])
    assert budget_of(link, "m1") == pytest.approx(before_w, abs=0.01)
