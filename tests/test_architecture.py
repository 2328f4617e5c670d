"""Tests that keep the code's shape (issue 16): which layer may import which, and what each
command loads. Each rule is a test of its own."""

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import agent.commands
from agent import cli

HEAVY_MODULES = ("paho", "gpiozero", "smbus2", "serial", "psutil", "agent.sim", "agent.mqtt")
"""Third-party packages, the simulator and the MQTT link: nothing a safety backstop needs."""

RUN_AND_LIST_IMPORTS = """
import json, sys
before = set(sys.modules)
from agent.cli import main
status = main(sys.argv[2:])
with open(sys.argv[1], "w") as out:
    json.dump(sorted(set(sys.modules) - before), out)
sys.exit(status)
"""


def modules_loaded_by(argv: list[str], listing: Path) -> tuple[subprocess.CompletedProcess, list]:
    """Run `hearth ARGV` in a fresh interpreter; the modules it imported beyond start-up."""
    result = subprocess.run([sys.executable, "-c", RUN_AND_LIST_IMPORTS, str(listing), *argv],
                            capture_output=True, text=True, timeout=60)
    return result, json.loads(listing.read_text())


def loaded(modules: list[str], package: str) -> list[str]:
    return [name for name in modules if name == package or name.startswith(package + ".")]


def too_heavy_for_a_backstop(modules: list[str]) -> list[str]:
    """Modules from outside the standard library and Hearth, and Hearth's heavy parts."""
    outside = [name for name in modules
               if name.split(".")[0] not in sys.stdlib_module_names | {"agent"}]
    return outside + [name for heavy in HEAVY_MODULES for name in loaded(modules, heavy)]


def fake_board(root: Path, groups: tuple[str, ...] = ("hearth.slice/hearth-workload.slice",
                                                     "hearth.slice/hearth-heatfill.slice")) -> None:
    """A Pi 4's cpufreq policy at its top frequency and the two cgroups, as sysfs shows them."""
    policy = root / "sys/devices/system/cpu/cpufreq/policy0"
    policy.mkdir(parents=True)
    (policy / "scaling_available_frequencies").write_text(
        " ".join(str(mhz * 1000) for mhz in range(600, 1600, 100)) + "\n")
    (policy / "affected_cpus").write_text("0 1 2 3\n")
    (policy / "cpuinfo_min_freq").write_text("600000\n")
    (policy / "cpuinfo_max_freq").write_text("1500000\n")
    (policy / "scaling_max_freq").write_text("1500000\n")
    for group in groups:
        directory = root / "sys/fs/cgroup" / group
        directory.mkdir(parents=True)
        (directory / "cgroup.freeze").write_text("0\n")
        (directory / "cpu.max").write_text("max 100000\n")


def test_failsafe_loads_no_third_party_module(tmp_path):
    fake_board(tmp_path / "root")
    result, modules = modules_loaded_by(
        ["failsafe", "--root", str(tmp_path / "root"), "--config", str(tmp_path / "none.toml")],
        tmp_path / "modules.json")
    assert result.returncode == 0, result.stderr
    policy = tmp_path / "root/sys/devices/system/cpu/cpufreq/policy0"
    assert (policy / "scaling_max_freq").read_text() == "600000\n"
    assert not too_heavy_for_a_backstop(modules)


def test_failsafe_reads_its_config_without_third_party_modules(tmp_path):
    """The config's loader is on the failsafe's path whenever /etc/hearth/hearth.toml exists."""
    fake_board(tmp_path / "root", ("paid.slice", "fill.slice"))
    config = tmp_path / "hearth.toml"
    config.write_text('board_type = "oil-carrier"\n[actuators]\n'
                      'workload_cgroup = "paid.slice"\nheatfill_cgroup = "fill.slice"\n'
                      '[[sensor]]\nname = "water_in"\nid = "28-0316a2795eff"\n'
                      '[[sensor]]\nname = "water_out"\nid = "28-0316a27f1c2a"\n')
    result, modules = modules_loaded_by(
        ["failsafe", "--root", str(tmp_path / "root"), "--config", str(config)],
        tmp_path / "modules.json")
    assert result.returncode == 0, result.stderr
    assert "agent.config" in modules
    for group in ("paid.slice", "fill.slice"):  # the groups the config names: it was read
        assert (tmp_path / "root/sys/fs/cgroup" / group / "cgroup.freeze").read_text() == "1\n"
    assert not too_heavy_for_a_backstop(modules)


def test_cli_imports_only_the_command_it_runs(tmp_path):
    result, modules = modules_loaded_by(["config", "docs"], tmp_path / "modules.json")
    assert result.returncode == 0, result.stderr
    assert "agent.commands.config" in modules
    assert loaded(modules, "agent.commands") == ["agent.commands", "agent.commands.config"]
    for heavy in HEAVY_MODULES:
        assert not loaded(modules, heavy), f"hearth config docs imported {loaded(modules, heavy)}"


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_status:
        cli.main(["--help"])
    assert exit_status.value.code == 0
    listing = capsys.readouterr().out
    for command in cli.COMMANDS:
        assert f"    {command.name} " in listing or f"    {command.name}\n" in listing
        assert " ".join(command.help.split()[:3]) in " ".join(listing.split())


def test_every_command_module_is_in_the_cli_table():
    modules = {f"agent.commands.{module.name}"
               for module in pkgutil.iter_modules(agent.commands.__path__)}
    assert modules == {command.module for command in cli.COMMANDS}


@pytest.mark.parametrize("command", cli.COMMANDS, ids=lambda command: command.name)
def test_a_commands_table_help_is_the_one_its_module_gives(command):
    """`hearth --help` is the same whichever command's module was loaded to build it."""
    assert cli.build_parser(command.name).format_help() == cli.build_parser().format_help()


AGENT = Path(__file__).resolve().parent.parent / "agent"
ABOVE_THE_RUNTIME = ("deploy", "sim", "commands", "fleet")
"""agent/ subpackages that sit above the board runtime and may import it (never the reverse)."""


def imported_names(source: Path) -> set[str]:
    """Every module a file imports, by absolute name; `from agent import deploy` counts too."""
    names = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{source}: relative import; write it absolute"
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def runtime_sources() -> list[Path]:
    return [path for path in sorted(AGENT.rglob("*.py"))
            if path.relative_to(AGENT).parts[0] not in ABOVE_THE_RUNTIME]


def test_no_runtime_module_imports_the_deployment_tools():
    sources = runtime_sources()
    assert AGENT / "board_agent.py" in sources and AGENT / "cli.py" in sources
    offenders = {str(path.relative_to(AGENT.parent)): loaded(sorted(imported_names(path)),
                                                            "agent.deploy")
                 for path in sources}
    assert {path: names for path, names in offenders.items() if names} == {}


def module_name(path: Path) -> str:
    parts = path.relative_to(AGENT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each of the package's modules -> the package's modules it imports, at module level or
    inside a function alike (a name that is not a module, `from m import f`, counts as `m`)."""
    modules = {module_name(path): path for path in AGENT.rglob("*.py")}
    return {name: {imported for imported in imported_names(path)
                   if imported in modules and imported != name}
            for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> ... -> a) through each strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    found = []
    for group in groups:
        start = min(group)
        paths = {start: [start]}
        queue = [start]
        while queue:
            node = queue.pop(0)
            for target in sorted(graph[node] & group):
                if target == start:
                    queue = []
                    found.append(paths[node] + [start])
                    break
                if target not in paths:
                    paths[target] = paths[node] + [target]
                    queue.append(target)
    return found


def test_cycle_finder_reports_the_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert "agent.console.commands" in graph["agent.console.docs"], "the graph sees imports"
    assert [" -> ".join(cycle) for cycle in cycles(graph)] == []


def test_only_the_command_line_imports_the_commands():
    """agent.commands is the top layer: the runtime, the console, the simulator and the
    deployment tools never reach up into it."""
    offenders = {}
    for path in sorted(AGENT.rglob("*.py")):
        relative = path.relative_to(AGENT)
        if relative.parts[0] == "commands" or relative == Path("cli.py"):
            continue
        names = loaded(sorted(imported_names(path)), "agent.commands")
        if names:
            offenders[str(relative)] = names
    assert offenders == {}


def top_level_imports(path: Path) -> set[str]:
    """The names a module imports when it is loaded (not inside its functions)."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_nothing_outside_the_simulator_imports_it():
    """The runtime never imports the simulator, anywhere; of the commands only the
    simulator's own (`hearth sim`, `hearth sim-board`) load it when imported, the rest
    (`hearth agent --sim`, `hearth tune --sim`) only when asked for it."""
    offenders = {}
    for path in sorted(AGENT.rglob("*.py")):
        relative = path.relative_to(AGENT)
        if relative.parts[0] == "sim":
            continue
        if relative.parts[0] == "commands":
            names = set() if path.stem in ("sim", "sim_board") else top_level_imports(path)
        else:
            names = imported_names(path)
        found = loaded(sorted(names), "agent.sim")
        if found:
            offenders[str(relative)] = found
    assert offenders == {}


def test_only_the_fleet_tools_import_the_fleet_package():
    """agent.fleet (NATS, the uplink, the centre) sits above the roles: no board, leader, site
    or simulator module imports it, so a board never needs nats-py; only the commands and the
    deployment tools (the NATS configuration) reach it."""
    offenders = {}
    for path in sorted(AGENT.rglob("*.py")):
        relative = path.relative_to(AGENT)
        if relative.parts[0] in ("fleet", "commands", "deploy"):
            continue
        found = loaded(sorted(imported_names(path)), "agent.fleet")
        if found:
            offenders[str(relative)] = found
    assert offenders == {}
    for path in sorted((AGENT / "fleet").rglob("*.py")):
        assert not loaded(sorted(imported_names(path)), "agent.commands"), path
