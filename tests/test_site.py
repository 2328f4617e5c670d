"""The site role's parts: demand from temperature or from site/demand, the split across modules
by capacity, and the site target set from Home Assistant."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.mqtt.link import Message
from agent.site.demand import ExternalDemand, split_across_modules
from agent.persist import StateStore
from agent.site.energy import SiteEnergy
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


def stamped(**fields):
    return json.dumps({"v": 1, "boot": "x", "seq": 1, "ts": 0.0, **fields}).encode()


def test_split_follows_capacity_and_caps():
    split = split_across_modules(30.0, {"m1": 40.0, "m2": 20.0, "m3": 0.0})
    assert split.setpoints_w == pytest.approx({"m1": 20.0, "m2": 10.0, "m3": 0.0})
    over = split_across_modules(100.0, {"m1": 40.0, "m2": 20.0})
    assert over.setpoints_w == pytest.approx({"m1": 40.0, "m2": 20.0})
    assert over.unallocated_w == pytest.approx(40.0)


def test_temperature_demand_rises_below_target_and_is_clamped():
    demand = HearthDemand(proportional_band_k=60.0, integral_time_s=10.0, max_step_s=30.0)
    assert demand.update(0, 45.0, 55.0, 300.0, 300.0) == pytest.approx(50.0)  # P alone first
    rising = [demand.update(t, 45.0, 55.0, 300.0, 300.0) for t in range(1, 200)]
    assert rising[0] == pytest.approx(5.0 * 10 + 0.5 * 10)
    assert all(b >= a for a, b in zip(rising, rising[1:]))
    assert rising[-1] == pytest.approx(300.0)  # clamped to what the site can deliver
    assert demand.integral_w == pytest.approx(300.0 - 50.0)  # and no further (anti-windup)
    assert demand.update(200, 56.0, 55.0, 300.0, 300.0) < 300.0  # above target: P acts at once


def test_demand_output_follows_capacity_now_but_the_integrator_the_full_capacity():
    demand = HearthDemand(proportional_band_k=100.0, integral_time_s=10.0, max_step_s=30.0)
    demand.update(0, 54.0, 55.0, 1000.0, 1000.0)
    for t in range(10, 310, 10):
        demand.update(t, 54.0, 55.0, 1000.0, 1000.0)
    before_w = demand.update(310, 55.0, 55.0, 1000.0, 1000.0)
    assert before_w == pytest.approx(300.0)  # 30 steps of 10 s at 1 K
    for t in range(320, 620, 10):  # a module interlocked: nothing available, error zero
        assert demand.update(t, 55.0, 55.0, 0.0, 1000.0) == 0.0
    assert demand.update(620, 55.0, 55.0, 1000.0, 1000.0) == pytest.approx(before_w)


def test_gains_scale_with_the_site_full_output_at_the_band_and_integral_time_tn():
    """[site] proportional_band_k: the error that asks for the full capacity, whatever the
    site's size; integral_time_s: the time in which the integral adds what P gives."""
    for full_w in (400.0, 4000.0):
        demand = HearthDemand(proportional_band_k=2.0, integral_time_s=600.0, max_step_s=30.0)
        assert demand.update(0, 54.0, 55.0, full_w, full_w) == pytest.approx(full_w / 2)
        for t in range(10, 610, 10):
            demand.update(t, 54.0, 55.0, full_w, full_w)
        assert demand.integral_w == pytest.approx(full_w / 2)  # one Tn: I has added P once
        assert HearthDemand(2.0, 600.0, 30.0).update(0, 53.0, 55.0, full_w, full_w) == (
            pytest.approx(full_w))


@settings(max_examples=200, deadline=None)
@given(band_k=st.floats(0.1, 50.0), integral_time_s=st.floats(10.0, 86400.0),
       full_w=st.floats(1.0, 1e6),
       steps=st.lists(st.tuples(st.floats(-30.0, 30.0), st.floats(0.0, 1.0)), min_size=1,
                      max_size=60))
def test_demand_is_bounded_never_winds_up_and_survives_capacity_drops(band_k, integral_time_s,
                                                                      full_w, steps):
    """For any band, integral time, site size and run of errors and capacity drops: the
    demand lies in [0, capacity now], the integrator in [0, full capacity], and a stretch
    without capacity at zero error leaves the demand where it was."""
    demand = HearthDemand(band_k, integral_time_s, max_step_s=30.0)
    for i, (error_k, share) in enumerate(steps):
        out_w = demand.update(i * 10.0, 55.0 - error_k, 55.0, share * full_w, full_w)
        assert 0.0 <= out_w <= share * full_w + 1e-9
        assert 0.0 <= demand.integral_w <= full_w
    now_s = len(steps) * 10.0
    held_w = demand.update(now_s, 55.0, 55.0, full_w, full_w)
    for i in range(1, 31):
        assert demand.update(now_s + 10.0 * i, 55.0, 55.0, 0.0, full_w) == 0.0
    assert demand.update(now_s + 310.0, 55.0, 55.0, full_w, full_w) == pytest.approx(held_w)


def test_site_gain_keys_load_and_the_old_absolute_gains_are_refused(tmp_path):
    from agent.config import load_config
    from agent.errors import ConfigError

    ids = ('board_type = "oil-carrier"\n[[sensor]]\nname = "water_in"\nid = "28-0316a2795eff"\n'
           '[[sensor]]\nname = "water_out"\nid = "28-0316a27f1c2a"\n'
           '[identity]\nsite = "s1"\nmodule = "m1"\nboard = "b01"\n')
    path = tmp_path / "hearth.toml"
    path.write_text(ids + "[site]\nproportional_band_k = 3.0\nintegral_time_s = 900\n")
    site = load_config(path).site
    assert (site.proportional_band_k, site.integral_time_s) == (3.0, 900.0)
    path.write_text(ids + "[site]\n")
    defaults = load_config(path).site
    assert (defaults.proportional_band_k, defaults.integral_time_s) == (
        SiteSettings().proportional_band_k, SiteSettings().integral_time_s)
    path.write_text(ids + "[site]\nkp_w_per_k = 50.0\n")
    with pytest.raises(ConfigError, match="kp_w_per_k"):
        load_config(path)
    path.write_text(ids + "[site]\nproportional_band_k = 0\n")
    with pytest.raises(ConfigError, match="proportional_band_k = 0"):
        load_config(path)


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
        period_s=10.0, target_c=55.0, proportional_band_k=100.0, integral_time_s=10.0),
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


def module_energy(capacity_w, boot, electric_wh, heat_wh):
    return json.dumps({"v": 1, "boot": boot, "seq": 1, "ts": 0.0, "capacity_w": capacity_w,
                       "interlock": {"active": False, "reason": ""},
                       "energy_electric_wh": electric_wh, "energy_heat_wh": heat_wh}).encode()


def started_site(tmp_path, now, loop_c=None, **settings):
    link = RecordingLink()
    role = SiteRole("s1", link, lambda: now[0], SiteSettings(**settings),
                    read_loop_c=(lambda: loop_c[0]) if loop_c is not None else None,
                    store=StateStore(tmp_path), wall_clock=lambda: 1.7e9)
    role.start()
    return role, link


def sent_states(link):
    return [p for t, p in link.published if t == "hearth/v1/s1/site/state"]


def test_site_energy_totals_never_lower_across_a_site_restart(tmp_path):
    now = [0.0]
    role, link = started_site(tmp_path, now)
    link.deliver("hearth/v1/s1/m1/leader/state", module_energy(100.0, "a", 400.0, 500.0))
    link.deliver("hearth/v1/s1/m2/leader/state", module_energy(100.0, "b", 100.0, 90.0))
    role.tick(0.0)
    assert sent_states(link)[-1]["energy_electric_wh"] == 500.0
    assert sent_states(link)[-1]["energy_heat_wh"] == 590.0
    del role  # the site crashes: no clean stop

    now[0] = 5.0
    role, link = started_site(tmp_path, now)
    role.tick(5.0)  # no leader heard yet: the totals saved, not 0.0
    first = sent_states(link)[0]
    assert (first["energy_electric_wh"], first["energy_heat_wh"]) == (500.0, 590.0)
    # m1's leader lost its ledger (new boot, counting from 0); m2's leader is gone
    link.deliver("hearth/v1/s1/m1/leader/state", module_energy(100.0, "c", 2.0, 3.0))
    role.tick(70.0)
    assert sent_states(link)[-1]["energy_electric_wh"] == 500.0  # a new segment, nothing lost
    link.deliver("hearth/v1/s1/m1/leader/state", module_energy(100.0, "c", 12.0, 3.0))
    role.tick(140.0)
    assert sent_states(link)[-1]["energy_electric_wh"] == 510.0


def test_site_energy_segments_follow_leader_boots():
    energy = SiteEnergy()
    energy.offer("m1", {"boot": "a", "energy_electric_wh": 100.0, "energy_heat_wh": 80.0})
    energy.offer("m1", {"boot": "a", "energy_electric_wh": 90.0})  # late, same boot: ignored
    energy.offer("m1", {"boot": "a", "energy_electric_wh": 110.0})
    assert energy.totals_wh()["energy_electric_wh"] == 110.0
    energy.offer("m1", {"boot": "b", "energy_electric_wh": 105.0})  # an older save: new segment
    energy.offer("m1", {"boot": "b", "energy_electric_wh": 107.0})
    assert energy.totals_wh()["energy_electric_wh"] == 112.0
    energy.offer("m1", {"boot": "c", "energy_electric_wh": 120.0})  # carried on
    assert energy.totals_wh()["energy_electric_wh"] == 125.0
    energy.offer("m1", {"boot": "c", "energy_electric_wh": float("inf"), "energy_heat_wh": -1})
    assert energy.totals_wh() == {"energy_electric_wh": 125.0, "energy_heat_wh": 80.0}
    assert SiteEnergy.from_payload(
        json.loads(json.dumps(energy.to_payload()))).totals_wh() == energy.totals_wh()
    with pytest.raises(ValueError, match="modules.m1.total_wh.energy_heat_wh"):
        SiteEnergy.from_payload({"modules": {"m1": {"boot": "c", "last_wh": {},
                                                    "total_wh": {"energy_heat_wh": -5}}}})


def test_site_target_mode_and_integrator_kept_across_a_site_restart(tmp_path):
    """Issue 15: a new SiteRole on the same state directory carries on where the last stopped."""
    now, loop_c = [0.0], [54.0]
    settings = dict(target_c=55.0, proportional_band_k=100.0, integral_time_s=10.0)
    role, link = started_site(tmp_path, now, loop_c, **settings)
    link.deliver("hearth/v1/s1/site/target/set", b"60")
    loop_c[0] = 59.0
    for step in range(30):
        link.deliver("hearth/v1/s1/m1/leader/state", module_state(1000.0))
        now[0] = step * 10.0
        role.tick(now[0])
    before_w = budget_of(link, "m1")
    integral_w = role.law.integral_w
    assert integral_w > 200.0 and sent_states(link)[-1]["target_c"] == 60.0
    role.close()

    role, link = started_site(tmp_path, now, loop_c, **settings)
    assert role.target_c == 60.0 and role.law.integral_w == integral_w
    link.deliver("hearth/v1/s1/m1/leader/state", module_state(1000.0))
    now[0] += 10.0
    role.tick(now[0])
    assert sent_states(link)[-1]["target_c"] == 60.0
    assert budget_of(link, "m1") == pytest.approx(before_w, abs=0.01)


def test_site_mode_sets_the_target_in_force_and_off_asks_nothing(tmp_path):
    now = [0.0]
    role, link = started_site(tmp_path, now, [40.0], target_c=55.0, eco_target_c=45.0)
    link.deliver("hearth/v1/s1/m1/leader/state", module_state(1000.0))
    link.deliver("hearth/v1/s1/site/mode/set", b"eco")
    role.tick(0.0)
    assert sent_states(link)[-1]["mode"] == "eco" and sent_states(link)[-1]["target_c"] == 45.0
    assert budget_of(link, "m1") > 0.0
    link.deliver("hearth/v1/s1/site/demand", stamped(demand_w=300.0))
    link.deliver("hearth/v1/s1/site/mode/set", b"off")
    role.tick(10.0)
    state = sent_states(link)[-1]
    assert state["mode"] == "off" and state["demand_w"] == 0.0 and budget_of(link, "m1") == 0.0
    for bad in (b"OFFF", b"", b"\xff", b"comfort please"):
        link.deliver("hearth/v1/s1/site/mode/set", bad)
    assert role.mode == "off" and role.rejected_messages == 4
    link.deliver("hearth/v1/s1/site/mode/set", b"comfort")
    role, link = started_site(tmp_path, now, [40.0], target_c=55.0)
    assert role.mode == "comfort"


@pytest.mark.parametrize("damage", [b"{not json", b"", json.dumps(
    {"format": "hearth-state", "version": 1, "sha256": "0", "payload": {}}).encode()])
def test_a_damaged_site_state_file_fails_closed(tmp_path, caplog, damage):
    now = [0.0]
    role, link = started_site(tmp_path, now, [50.0], target_c=55.0)
    link.deliver("hearth/v1/s1/site/target/set", b"62")
    link.deliver("hearth/v1/s1/site/mode/set", b"eco")
    (tmp_path / "site-control.json").write_bytes(damage)
    with caplog.at_level("WARNING"):
        role, link = started_site(tmp_path, now, [50.0], target_c=55.0)
    assert role.target_c == 55.0 and role.mode == "auto" and role.law.integral_w == 0.0
    line = caplog.records[-1].getMessage()
    assert str(tmp_path / "site-control.json") in line and "kept as site-control.json.damaged-" in line
    assert "config's target 55 C" in line
    aside = list(tmp_path.glob("site-control.json.damaged-*"))
    assert [p.read_bytes() for p in aside] == [damage]
    role.tick(0.0)
    assert sent_states(link)[-1]["target_c"] == 55.0


def test_a_saved_control_state_out_of_range_is_refused_whole(tmp_path, caplog):
    StateStore(tmp_path).write("site-control.json", 1, {
        "target_c": 60.0, "mode": "eco", "law": {"integral_w": -3.0}, "capacity_full_w": {}})
    with caplog.at_level("WARNING"):
        role, _ = started_site(tmp_path, [0.0], [50.0], target_c=55.0)
    assert (role.target_c, role.mode) == (55.0, "auto")
    assert "integral_w is -3.0" in caplog.records[-1].getMessage()


class WireWatch:
    """A plain MQTT client, as Home Assistant is: reads site/state and sends plain commands."""

    def __init__(self, broker):
        import queue

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.states = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="home-assistant")
        self.client.on_message = lambda _c, _u, message: self.states.put(
            json.loads(message.payload))
        self.client.connect(broker.host, broker.port)
        self.client.subscribe("hearth/v1/s1/site/state", qos=1)
        self.client.loop_start()

    def next_state(self, timeout_s=20.0):
        return self.states.get(timeout=timeout_s)

    def state_where(self, check, timeout_s=20.0):
        import time

        deadline = time.monotonic() + timeout_s
        while True:
            state = self.next_state(max(0.1, deadline - time.monotonic()))
            if check(state):
                return state

    def send(self, topic, text):
        self.client.publish(topic, text.encode(), qos=1).wait_for_publish(5)

    def drain(self):
        while not self.states.empty():
            self.states.get_nowait()


def test_site_target_set_over_mqtt_survives_a_restart_of_hearth_site(tmp_path, mosquitto):
    """Issue 14: set to 60 C over MQTT, `hearth site` restarted: 60 C on the wire, not 55."""
    import subprocess
    import sys

    broker = mosquitto()
    config = tmp_path / "hearth.toml"
    config.write_text('board_type = "oil-carrier"\n'
                      '[[sensor]]\nname = "water_in"\nid = "28-0316a2795eff"\n'
                      '[[sensor]]\nname = "water_out"\nid = "28-0316a27f1c2a"\n'
                      '[identity]\nsite = "s1"\nmodule = "m1"\nboard = "b01"\n'
                      f'[mqtt]\nbrokers = ["{broker.host}:{broker.port}"]\n'
                      '[site]\nperiod_s = 1.0\ntarget_c = 55.0\n')
    command = [sys.executable, "-m", "agent", "site", "--config", str(config), "--state-dir",
               str(tmp_path / "state")]
    watch = WireWatch(broker)
    site = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert watch.next_state()["target_c"] == 55.0
        watch.send("hearth/v1/s1/site/target/set", "60")
        watch.send("hearth/v1/s1/site/mode/set", "comfort")
        watch.state_where(lambda state: state["target_c"] == 60.0 and state["mode"] == "comfort")
        site.terminate()
        assert site.wait(timeout=20) == 0, site.stdout.read().decode()
        watch.drain()
        site = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        first = watch.next_state()
        assert (first["target_c"], first["mode"]) == (60.0, "comfort")
    finally:
        site.terminate()
        site.wait(timeout=20)
        watch.client.loop_stop()
