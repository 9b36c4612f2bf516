"""`gate doctor` and `gate calibrate` on simulated and on absent hardware."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drivers.sim_i2c import SimulatedMLX90614Bus
from drivers.systemclock import STA_UNSYNC, TIME_ERROR, KernelClock
from edge.calibration import CalibrationError, calibration_path, load_offset
from edge.clock import GateClock
from edge.config import ConfigError, load_config
from edge.doctor import check_clock, check_gpio, check_provisioning, check_thermometer
from edge.provision import provision
from server.site import Site
from tests.conftest import run_menwei


def real_hardware_config(gate_dir: Path) -> Path:
    """The same gate, configured for a Pi: this machine has no camera, I2C bus or GPIO."""
    text = (gate_dir / "gate.toml").read_text()
    text = text.replace('source = "watch:stage"', 'source = "device:7"')
    text = text.replace(
        '[thermometer]\nbackend = "simulated"', '[thermometer]\nbackend = "mlx90614"\ni2c_bus = 97'
    )
    text = text.replace('[gpio]\nbackend = "simulated"', '[gpio]\nbackend = "rpi"')
    path = gate_dir / "real.toml"
    path.write_text(text)
    return path


def test_doctor_passes_every_simulated_device(gate_dir: Path) -> None:
    proc = run_menwei(
        "gate",
        "doctor",
        "--config",
        str(gate_dir / "gate.toml"),
        "--json",
        "--broker",
        "mqtt://127.0.0.1:1",
        check=False,
    )
    result = json.loads(proc.stdout)
    by_device = {c["device"]: c for c in result["checks"]}
    assert {d for d, c in by_device.items() if c["ok"]} == {
        "files",
        "database",
        "provisioning",
        "camera",
        "thermometer",
        "gpio",
        "clock",
    }
    assert not by_device["broker"]["ok"] and by_device["broker"]["fix"]
    assert result["ok"] is False and proc.returncode == 1
    assert "PEC checked" in by_device["thermometer"]["detail"]


def test_doctor_names_the_fix_for_each_missing_device(gate_dir: Path) -> None:
    proc = run_menwei(
        "gate", "doctor", "--config", str(real_hardware_config(gate_dir)), "--json", check=False
    )
    by_device = {c["device"]: c for c in json.loads(proc.stdout)["checks"]}
    assert not by_device["camera"]["ok"] and "v4l2-ctl" in by_device["camera"]["fix"]
    assert not by_device["thermometer"]["ok"]
    assert "i2c_arm=on" in by_device["thermometer"]["fix"]  # /dev/i2c-97 does not exist
    assert not by_device["gpio"]["ok"] and "rpi-lgpio" in by_device["gpio"]["fix"]
    assert proc.returncode == 1


def test_thermometer_check_reports_each_bus_fault(gate_dir: Path) -> None:
    config = load_config(gate_dir / "gate.toml")

    def bus_with(fault: str) -> SimulatedMLX90614Bus:
        bus = SimulatedMLX90614Bus()
        if fault == "unplugged":
            bus.unplug()
        elif fault == "pec":
            bus.corrupt_pec()
        elif fault == "flag":
            bus.set_error_flag()
        return bus

    unplugged = check_thermometer(config, lambda: bus_with("unplugged"))
    assert not unplugged.ok and "i2cdetect" in unplugged.fix
    pec = check_thermometer(config, lambda: bus_with("pec"))
    assert not pec.ok and "check_pec = false" in pec.fix
    flag = check_thermometer(config, lambda: bus_with("flag"))
    assert not flag.ok
    assert check_thermometer(config, lambda: bus_with("none")).ok


def test_gpio_check_fails_on_a_pin_the_board_does_not_have(gate_dir: Path) -> None:
    toml = gate_dir / "gate.toml"
    config = load_config(toml)
    toml.write_text(
        toml.read_text().replace(
            '[gpio]\nbackend = "simulated"', '[gpio]\nbackend = "simulated"\nrelay_pin = 40'
        )
    )
    with pytest.raises(ConfigError, match=r"relay_pin must be 0\.\.27, got 40"):
        load_config(toml)  # gate.toml is checked first (BCM numbers of the 40-pin header)
    # A configuration built in code, past the loader: the board itself refuses the pin.
    check = check_gpio(replace(config, gpio=replace(config.gpio, relay_pin=40)))
    assert not check.ok and "BCM" in check.fix


def test_calibrate_records_an_offset_the_gate_then_uses(gate_dir: Path) -> None:
    config_path = gate_dir / "gate.toml"
    config = load_config(config_path)
    assert load_offset(config).base_c == config.thermometer.offset_c
    proc = run_menwei(
        "gate",
        "calibrate",
        "--config",
        str(config_path),
        "--reference",
        "36.9",
        "--simulated-forehead",
        "34.0",
        "--json",
    )
    result = json.loads(proc.stdout)
    offset = load_offset(config)
    assert calibration_path(config).exists()
    # 34.0 °C skin at the simulated 24 °C ambient must now read as 36.9 °C body.
    assert abs(offset.body_c(result["skin_c"], result["ambient_c"]) - 36.9) < 0.01
    assert abs(result["skin_c"] - 34.0) < 0.05


def test_calibrate_refuses_an_implausible_reference(gate_dir: Path) -> None:
    proc = run_menwei(
        "gate",
        "calibrate",
        "--config",
        str(gate_dir / "gate.toml"),
        "--reference",
        "60",
        check=False,
    )
    assert proc.returncode == 2 and "35.0..42.0" in proc.stderr
    assert not (gate_dir / "calibration.json").exists()


def test_calibrate_refuses_an_offset_no_forehead_needs_and_so_does_the_gate(
    gate_dir: Path,
) -> None:
    """A 42 °C reference held against a sensor that reads 33 °C skin (a fever read through a
    fringe): an offset of 9 °C would read a fever into every forehead that comes next. A
    calibration.json edited to nan is refused too."""
    config_path = gate_dir / "gate.toml"
    argv = ["gate", "calibrate", "--config", str(config_path), "--reference", "42"]
    proc = run_menwei(*argv, "--simulated-forehead", "33.0", check=False)
    assert proc.returncode == 2 and "outside 0..6 °C" in proc.stderr
    config = load_config(config_path)
    assert not calibration_path(config).exists()
    calibration_path(config).write_text('{"offset": {"base_c": NaN}}', encoding="utf-8")
    with pytest.raises(CalibrationError, match=r"outside 0\.\.6 °C"):
        load_offset(config)


def test_doctor_says_what_an_untrusted_clock_does_and_what_to_do(gate_dir: Path) -> None:
    config = load_config(gate_dir / "gate.toml")
    booted = KernelClock(False, TIME_ERROR, STA_UNSYNC, 16_000_000, 16_000_000, 0.0)
    synced = KernelClock(True, 0, 0x1, 30_000, 2_000, 0.0)

    check = check_clock(config, GateClock("kernel", kernel=lambda: booted))
    assert not check.ok and "TIME_ERROR" in check.detail and "maxerror 16000 ms" in check.detail
    assert "guard_confirm" in check.effect and "请门卫人工核验" in check.effect
    for step in ("timedatectl set-ntp true", "chronyc tracking", "UDP port 123"):
        assert step in check.fix
    assert "effect: " in check.line() and "fix: " in check.line()

    ok = check_clock(config, GateClock("kernel", kernel=lambda: synced))
    assert ok.ok and "maxerror 30 ms" in ok.detail and ok.line().count("\n") == 0


def test_doctor_json_carries_the_clocks_effect(gate_dir: Path) -> None:
    toml = gate_dir / "gate.toml"
    toml.write_text(toml.read_text().replace('trust = "assume"', 'trust = "never"'))
    proc = run_menwei("gate", "doctor", "--config", str(toml), "--json", check=False)
    clock = {c["device"]: c for c in json.loads(proc.stdout)["checks"]}["clock"]
    assert not clock["ok"] and clock["detail"] == "never (trust = never)"
    assert "guard_confirm" in clock["effect"] and 'trust = "kernel"' in clock["fix"]
    assert proc.returncode == 1
    human = run_menwei("gate", "doctor", "--config", str(toml), check=False).stdout
    assert "FAIL clock" in human and "     effect: 时钟不可信" in human


def test_doctor_fails_documents_without_recent_proof_and_says_why(tmp_path: Path) -> None:
    """A gate provisioned from a bundle last re-affirmed 30 hours ago (a USB stick copied the
    day before): every passage would need the guard; a fresh statement ends that."""
    Site.init(tmp_path / "srv", "old-site").close()
    then = datetime.now(UTC) - timedelta(hours=30)
    with Site(tmp_path / "srv", clock=lambda: then) as site:
        site.publish_config()
        site.publish_register()
    provision(tmp_path / "gate", tmp_path / "srv", "east", simulated=True)
    config = load_config(tmp_path / "gate" / "gate.toml")
    stale = check_provisioning(config)
    assert not stale.ok
    assert "older than max_data_age_h = 24 h" in stale.detail and "30 h ago" in stale.detail
    assert "rule data_age" in stale.effect and "menwei server run" in stale.fix

    with Site(tmp_path / "srv") as site:
        site.publish_freshness()
    provision(tmp_path / "gate", tmp_path / "srv", "east", simulated=True)
    fresh = check_provisioning(config)
    assert fresh.ok and "proven current 0 h ago" in fresh.detail
