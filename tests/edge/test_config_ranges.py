"""Dangerous gate.toml values (issue 11: 17 of 22 passed `check-config`): each one is refused
by `menwei gate check-config` and by `menwei gate run` with the same message, exit 2, no
traceback. The gate is provisioned and its file valid but for the one value under test."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.provision import provision
from menwei.cli import main
from server.site import Site
from tests.conftest import SITE, run_menwei
from tests.tomlfile import rewrite

# (overrides of gate.toml: "table.key" -> value, what the message must say)
DANGEROUS: list[tuple[dict[str, Any], str]] = [
    ({"gpio.relay_pulse_s": math.nan}, "gpio relay_pulse_s: expected a finite number, got nan"),
    ({"gpio.relay_pulse_s": math.inf}, "gpio relay_pulse_s: expected a finite number, got inf"),
    ({"gpio.relay_pulse_s": 1e9}, "relay_pulse_s must be 0.01..60 s, got 1000000000.0"),
    ({"gpio.relay_pulse_s": 0}, "relay_pulse_s must be 0.01..60 s, got 0"),
    ({"gpio.relay_pin": -1}, "relay_pin must be 0..27, got -1"),
    ({"gpio.relay_pin": 40}, "relay_pin must be 0..27, got 40"),
    ({"gpio.relay_pin": 22}, "relay_pin and green_pin are both BCM 22"),
    ({"gpio.door_pin": 17}, "relay_pin and door_pin are both BCM 17"),
    ({"gpio.exit_button_pin": 23}, "buzzer_pin and exit_button_pin are both BCM 23"),
    ({"gpio.buzzer_pin": 99}, "buzzer_pin must be 0..27, got 99"),
    (
        {"gpio.relay_pin": 2, "thermometer.backend": "mlx90614"},
        "[gpio] relay_pin on BCM 2 or 3: those are the SDA and SCL of I2C bus 1",
    ),
    ({"gpio.door_alert_s": -1.0}, "door_alert_s must be 1..3600 s, got -1.0"),
    ({"thermometer.offset_c": math.nan}, "thermometer offset_c: expected a finite number"),
    ({"thermometer.offset_c": 30.0}, "offset_c must be 0..6 °C, got 30.0"),
    ({"thermometer.tolerance_c": -math.inf}, "thermometer tolerance_c: expected a finite number"),
    ({"thermometer.samples": 0}, "samples must be 1..20, got 0"),
    ({"thermometer.address": 0x80}, "address must be 3..119, got 128"),
    ({"thermometer.timeout_s": 1e12}, "timeout_s must be 0.5..30 s"),
    ({"mqtt.broker": "ftp://10.0.0.2:21"}, "scheme must be mqtt:// or mqtts://"),
    ({"mqtt.broker": "mqtt://10.0.0.2:0"}, "the port must be 1..65535"),
    ({"mqtt.broker": "mqtt://10.0.0.2:99999"}, "the port must be 1..65535"),
    ({"mqtt.broker": "mqtt://:1883"}, "no host"),
    ({"mqtt.broker": "mqtt://gate:secret@10.0.0.2:1883"}, "no user or password in the URL"),
    ({"mqtt.keepalive_s": 100_000}, "keepalive_s must be 0..3600 s, got 100000"),
    ({"mqtt.resend_after_s": 0.001}, "resend_after_s must be 1..3600 s, got 0.001"),
    ({"mqtt.window": 10**12}, "window must be 1..100000"),
    ({"guard.override_pulse_s": math.inf}, "guard override_pulse_s: expected a finite number"),
    ({"guard.http": "127.0.0.1:0"}, "must be HOST:PORT (port 1..65535)"),
    ({"storage.purge_interval_h": math.nan}, "storage purge_interval_h: expected a finite number"),
    ({"storage.retention_days": 0}, "retention_days must be 1..3650 days, got 0"),
    ({"camera.fps": 0}, "fps must be 1..120, got 0"),
    ({"camera.width": 1_000_000}, "width must be 16..8192 px"),
    ({"camera.scan_holdoff_s": -math.inf}, "camera scan_holdoff_s: expected a finite number"),
    ({"clock.max_error_ms": 10**9}, "max_error_ms must be 1..16000 ms"),
]


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("ranges")
    with Site.init(root / "server", SITE) as site:
        provision(root / "gate", site.dir, "east", "in", simulated=True)
    yield root / "gate"


def variant(gate: Path, tmp_path: Path, overrides: dict[str, Any]) -> Path:
    """gate.toml of the provisioned `gate` with `overrides`, in `tmp_path` (data_dir: `gate`)."""
    source = gate / "gate.toml"
    return rewrite(source, tmp_path / "gate.toml", {"gate.data_dir": str(gate), **overrides})


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


def test_the_table_is_the_issue_s_and_more() -> None:
    assert len(DANGEROUS) >= 22


def test_the_valid_variant_passes_check_config(
    gate: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The control: what the variants change is the only fault."""
    path = variant(gate, tmp_path, {})
    assert main(["gate", "check-config", "--config", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


@pytest.mark.parametrize(("overrides", "says"), DANGEROUS, ids=lambda v: str(v)[:60])
def test_check_config_and_gate_run_refuse_it_alike(
    gate: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    overrides: dict[str, Any],
    says: str,
) -> None:
    path = variant(gate, tmp_path, overrides)
    checked = run(capsys, "gate", "check-config", "--config", str(path))
    ran = run(capsys, "gate", "run", "--config", str(path))
    assert checked == ran
    code, err = checked
    assert code == 2
    assert says in err and str(path) in err
    assert err.startswith("menwei: error: ") and "Traceback" not in err


@pytest.mark.parametrize(
    "overrides", [{"gpio.relay_pulse_s": math.nan}, {"mqtt.broker": "ftp://10.0.0.2:21"}]
)
def test_the_real_processes_exit_2_without_a_traceback(
    gate: Path, tmp_path: Path, overrides: dict[str, Any]
) -> None:
    path = variant(gate, tmp_path, overrides)
    checked = run_menwei("gate", "check-config", "--config", str(path), check=False)
    ran = run_menwei("gate", "run", "--config", str(path), check=False, timeout=60)
    assert (checked.returncode, ran.returncode) == (2, 2)
    assert checked.stderr == ran.stderr and "Traceback" not in ran.stderr


@pytest.mark.parametrize("broker", ["ftp://10.0.0.2:21", "mqtt://10.0.0.2:0", 'mqtt://a"b:1'])
def test_a_bad_broker_on_the_command_line_is_refused_before_anything_is_written(
    gate: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], broker: str
) -> None:
    config = str(variant(gate, tmp_path, {}))
    code, err = run(capsys, "gate", "run", "--config", config, "--broker", broker)
    assert code == 2 and "broker" in err
    server = gate.parent / "server"
    new = tmp_path / "new-gate"
    code, err = run(capsys, "gate", "init", str(new), "--server", str(server), "--gate", "w")
    assert code == 0  # the control
    new = tmp_path / "other-gate"
    argv = ["gate", "init", str(new), "--server", str(server), "--gate", "w", "--broker", broker]
    code, err = run(capsys, *argv)
    assert code == 2 and "broker" in err and not new.exists()
