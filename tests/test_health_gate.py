"""The health gate's verdicts on a trial boot, driven with plain values: systemd's facts of
hearth-agent.service, the board's state as it came off the broker, and time."""

import subprocess

import pytest

from agent.errors import ConfigValueError
from agent.update.health_gate import (
    PASS, GateSettings, HealthGate, ObservedState, SystemdService)
from agent.update.slots import ServiceFacts

RUNNING = ServiceFacts("active", "running", 0)
HEALTHY = {"mode": "NORMAL", "setpoint_source": "leader", "faults": [], "soc_c": 55.0,
           "power_w": 4.2}
SETTINGS = GateSettings(window_s=60.0, hold_s=10.0, max_restarts=2, state_stale_s=5.0)


def run_gate(service_at, state_at, until_s=100.0):
    """Feed the gate once a second from 0; the first verdict and when it came."""
    gate = HealthGate(SETTINGS, started_s=0.0)
    now_s = 0.0
    while now_s <= until_s:
        verdict = gate.check(now_s, service_at(now_s), state_at(now_s))
        if verdict is not None:
            return verdict, now_s
        now_s += 1.0
    return None, now_s


def fresh(payload):
    return lambda now_s: ObservedState(payload, now_s)


def test_a_healthy_board_passes_after_the_hold_time():
    verdict, at_s = run_gate(lambda now_s: RUNNING, fresh(HEALTHY))
    assert (verdict, at_s) == (PASS, 10.0)


def test_a_break_in_health_restarts_the_hold():
    def state(now_s):
        payload = dict(HEALTHY, setpoint_source="fallback") if now_s == 8.0 else HEALTHY
        return ObservedState(payload, now_s)
    verdict, at_s = run_gate(lambda now_s: RUNNING, state)
    assert (verdict, at_s) == (PASS, 19.0)


def test_a_crash_loop_fails_at_once_with_the_restarts_counted():
    verdict, at_s = run_gate(lambda now_s: ServiceFacts("activating", "auto-restart",
                                                        int(now_s // 3)), fresh(HEALTHY))
    assert at_s == 9.0
    assert "crash-loops: restarted 3 times" in verdict


def test_no_broker_fails_when_the_window_runs_out():
    verdict, at_s = run_gate(lambda now_s: RUNNING, lambda now_s: None)
    assert at_s == 60.0
    assert "window of 60 s ran out" in verdict
    assert "has not reached the broker" in verdict


def test_a_state_gone_stale_is_a_lost_broker():
    verdict, _ = run_gate(lambda now_s: RUNNING,
                          lambda now_s: ObservedState(HEALTHY, min(now_s, 3.0)))
    assert "lost the broker" in verdict


@pytest.mark.parametrize("change, words", [
    ({"mode": "SAFE"}, "mode 'SAFE'"),
    ({"setpoint_source": "fallback"}, "not the leader"),
    ({"faults": ["soc:critical"]}, "latched faults"),
    ({"soc_c": None}, "no valid soc_c"),
    ({"power_w": True}, "no valid power_w"),
])
def test_each_unhealthy_state_times_out_naming_its_problem(change, words):
    verdict, at_s = run_gate(lambda now_s: RUNNING, fresh(dict(HEALTHY, **change)))
    assert at_s == 60.0 and words in verdict


def test_a_failed_agent_fails_at_once():
    verdict, at_s = run_gate(lambda now_s: ServiceFacts("failed", "failed", 0), fresh(HEALTHY))
    assert at_s == 0.0 and "failed" in verdict


def test_settings_from_the_file_are_checked_and_named(tmp_path):
    path = tmp_path / "update.toml"
    path.write_text('health_window_s = 45\nhealth_hold_s = 15\nbootloader_dir = "/run/x"\n')
    assert GateSettings.from_file(path) == GateSettings(45.0, 15.0, 2, 10.0, "/run/x")
    assert GateSettings.from_file(tmp_path / "absent.toml") == GateSettings()
    for text, words in (("health_window_s = 5", "health_window_s = 5 must be a number from 30"),
                        ("health_hold_s = 1000", "health_hold_s = 1000 must be"),
                        ("max_agent_restarts = 1.5", "whole number"),
                        ("health_windw_s = 60", "unknown key 'health_windw_s'"),
                        ('bootloader_dir = "run/x"', "must be an absolute directory path")):
        path.write_text(text)
        with pytest.raises(ConfigValueError, match=words):
            GateSettings.from_file(path)


def test_systemd_facts_come_from_systemctl_show(tmp_path):
    """A stand-in systemctl prints what systemd 252 prints for `show -p ...` (one KEY=value a
    line, in systemd's own order); a systemctl that fails reads as a failed unit."""
    calls = []

    def fake(argv, stdout="ActiveState=activating\nSubState=auto-restart\nNRestarts=4\n",
             code=0):
        calls.append(list(argv))
        return subprocess.CompletedProcess(argv, code, stdout, "")
    facts = SystemdService(run=fake)()
    assert calls == [["systemctl", "show", "-p", "ActiveState,SubState,NRestarts",
                      "hearth-agent.service"]]
    assert facts == ServiceFacts("activating", "auto-restart", 4)
    broken = SystemdService(run=lambda argv: fake(argv, "", 1))()
    verdict, at_s = run_gate(lambda now_s: broken, fresh(HEALTHY))
    assert at_s == 60.0 and "hearth-agent.service is unknown" in verdict

    def hangs(argv):
        raise subprocess.TimeoutExpired(argv, 10)
    assert SystemdService(run=hangs)().active_state == "unknown"


def test_systemctl_takes_the_show_line_the_gate_uses():
    """The real systemctl parses our options (no systemd runs here, so it may only fail to
    reach it, never reject the arguments)."""
    result = subprocess.run(["systemctl", "show", "-p", "ActiveState,SubState,NRestarts",
                             "hearth-agent.service"], capture_output=True, text=True)
    assert "unrecognized option" not in result.stderr and "Unknown" not in result.stderr
