"""gate.toml: strict, and every error names the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import ConfigError, load_config
from edge.provision import render_gate_toml

MINIMAL = '[gate]\nsite = "test-site"\nid = "east"\n'


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "gate.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_minimal_file_gets_documented_defaults(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))

    assert (config.gate.site, config.gate.id, config.gate.direction) == ("test-site", "east", "in")
    assert (config.mqtt.batch_size, config.mqtt.window, config.clock.trust) == (
        50,
        500,
        "kernel",
    )
    assert config.clock.max_error_ms == 16000  # the kernel's own limit
    assert config.path == tmp_path / "gate.toml"
    assert config.db_path == tmp_path.resolve() / "gate.db"


def test_full_file(tmp_path):
    text = (
        '[gate]\nsite = "test-site"\nid = "north-2"\ndirection = "both"\ndata_dir = "data"\n'
        'language = "en"\n\n'
        '[mqtt]\nbroker = "mqtt://10.0.0.2:1883"\nusername = "gate"\npassword = "s3cret"\n'
        "batch_size = 20\nwindow = 20\nresend_after_s = 5\n\n"
        '[clock]\ntrust = "never"\n\n'
        '[camera]\nsource = "folder:frames"\nfps = 10\nscan_holdoff_s = 2.5\n\n'
        '[thermometer]\nbackend = "simulated"\naddress = 0x5B\noffset_c = 1.8\n\n'
        '[gpio]\nbackend = "simulated"\nrelay_active_low = true\nexit_button_pin = 5\n'
    )
    config = load_config(write(tmp_path, text))

    assert config.gate.direction == "both" and config.gate.language == "en"
    assert config.db_path == (tmp_path / "data" / "gate.db").resolve()
    assert (config.mqtt.username, config.mqtt.batch_size, config.mqtt.window) == ("gate", 20, 20)
    assert config.mqtt.resend_after_s == 5.0 and type(config.mqtt.resend_after_s) is float
    assert (config.thermometer.address, config.gpio.relay_active_low) == (0x5B, True)
    assert config.gpio.door_pin == 25  # defaults of the table still apply
    assert config.resolve("frames") == (tmp_path / "frames").resolve()


@pytest.mark.parametrize(("simulated", "direction"), [(True, "in"), (False, "out")])
def test_the_file_gate_init_writes_is_valid(tmp_path, simulated, direction):
    text = render_gate_toml("test-site", "east", direction, simulated, "mqtt://127.0.0.1:1883")
    config = load_config(write(tmp_path, text))
    assert (config.gate.id, config.gate.direction) == ("east", direction)
    assert config.gpio.backend == ("simulated" if simulated else "rpi")
    # A hardware gate trusts the kernel (chrony, ntpd or timesyncd); a simulation assumes.
    assert config.clock.trust == ("assume" if simulated else "kernel")


@pytest.mark.parametrize("trust", ["kernel", "timesyncd", "assume", "never"])
def test_every_clock_trust_loads_and_an_old_timesyncd_config_still_does(tmp_path, trust):
    config = load_config(
        write(tmp_path, MINIMAL + f'[clock]\ntrust = "{trust}"\nmax_error_ms = 500\n')
    )
    assert (config.clock.trust, config.clock.max_error_ms) == (trust, 500)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (MINIMAL + "[camra]\nfps = 5\n", ["unknown key(s) camra"]),
        (MINIMAL + "[path]\nx = 1\n", ["unknown table [path]"]),
        (MINIMAL.replace('id = "east"', 'id = "east"\nlanguge = "en"'), ["gate", "languge"]),
        (MINIMAL + "[mqtt]\nbatchsize = 5\n", ["mqtt", "batchsize", "batch_size"]),
        (MINIMAL + "[gpio]\nrelay_pin = 17\n[gpio.extra]\n", ["gpio", "extra"]),
    ],
)
def test_unknown_table_or_key_names_file_and_key(tmp_path, text, names):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path.resolve()) in str(err.value) or str(path) in str(err.value)
    for name in names:
        assert name in str(err.value)


@pytest.mark.parametrize(
    ("extra", "names"),
    [
        ('[mqtt]\nbatch_size = "50"\n', ["mqtt batch_size", "whole number"]),
        ("[mqtt]\nbatch_size = 5.0\n", ["mqtt batch_size", "whole number"]),
        ("[mqtt]\nbatch_size = true\n", ["mqtt batch_size", "whole number"]),
        ("[gpio]\nrelay_active_low = 1\n", ["gpio relay_active_low", "true or false"]),
        ('[gpio]\nexit_button_pin = "24"\n', ["gpio exit_button_pin"]),
        ("[camera]\nscan_holdoff_s = false\n", ["camera scan_holdoff_s", "number"]),
        ('[clock]\ntrust = "ntp"\n', ["clock trust", "'kernel', 'timesyncd', 'assume', 'never'"]),
        ("[clock]\nmax_error_ms = 0\n", ["clock", "max_error_ms must be 1..16000 ms"]),
        ("[clock]\nmax_error_ms = 20000\n", ["clock", "max_error_ms must be 1..16000 ms"]),
        ("[clock]\nmax_error_ms = 500.5\n", ["clock max_error_ms", "whole number"]),
        ('[thermometer]\nbackend = "dht22"\n', ["thermometer backend", "'mlx90614'"]),
        ("[mqtt]\nusername = 5\n", ["mqtt username"]),
    ],
)
def test_wrong_type_names_table_and_key(tmp_path, extra, names):
    path = write(tmp_path, MINIMAL + extra)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    for name in [str(path), *names]:
        assert name in str(err.value)


def test_table_given_as_a_value(tmp_path):
    path = write(tmp_path, 'camera = "device:0"\n' + MINIMAL)
    with pytest.raises(ConfigError, match=f"{path} camera: expected a table"):
        load_config(path)


@pytest.mark.parametrize(
    ("site", "gate"),
    [("Test-Site", "east"), ("test-site", "East Gate"), ("-site", "east"), ("test-site", "e" * 33)],
)
def test_bad_slug(tmp_path, site, gate):
    path = write(tmp_path, f'[gate]\nsite = "{site}"\nid = "{gate}"\n')
    with pytest.raises(ConfigError, match="must be 1-32 of a-z, 0-9 and '-'") as err:
        load_config(path)
    assert str(path) in str(err.value) and "gate" in str(err.value)


@pytest.mark.parametrize(
    "text",
    [
        "[gate\nsite = 1\n",
        MINIMAL + "site = 'dup'\n",  # a key defined twice
        MINIMAL + "[mqtt]\nbroker = mqtt://x\n",  # an unquoted string
        "\t= 3\n",
    ],
)
def test_bad_toml(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="not valid TOML") as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_file_that_is_not_utf8_is_a_config_error(tmp_path):
    path = write(tmp_path, MINIMAL.encode() + b'[camera]\nsource = "\xff\xfe"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nowhere.toml")


@pytest.mark.parametrize(
    ("mqtt", "message"),
    [
        ("batch_size = 100\nwindow = 50\n", "window must be at least batch_size"),
        ("window = 10\n", "window must be at least batch_size"),  # default batch_size 50
        ("batch_size = 0\n", "batch_size must be 1..500"),
        ("batch_size = 501\nwindow = 1000\n", "batch_size must be 1..500"),
        ("resend_after_s = 0\n", "resend_after_s must be 1..3600 s, got 0"),
    ],
)
def test_mqtt_limits(tmp_path, mqtt, message):
    path = write(tmp_path, MINIMAL + "[mqtt]\n" + mqtt)
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path)
    assert f"{path} mqtt" in str(err.value)


@pytest.mark.parametrize(
    ("text", "missing"),
    [
        ("", "gate"),
        ('[mqtt]\nbroker = "mqtt://127.0.0.1:1883"\n', "gate"),
        ('[gate]\nsite = "test-site"\n', "id"),
        ('[gate]\nid = "east"\n', "site"),
    ],
)
def test_missing_gate_table_or_key(tmp_path, text, missing):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=f"missing .*'{missing}'") as err:
        load_config(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[gpio]\nrelay_pulse_s = 0\n", "relay_pulse_s"),  # Relay.pulse raises after the log
        ("[gpio]\nrelay_pulse_s = -3\n", "relay_pulse_s"),
        ("[gpio]\ndoor_alert_s = 0\n", "door_alert_s"),
        ("[guard]\noverride_pulse_s = 0\n", "override_pulse_s"),
        ("[thermometer]\nrecheck_delay_s = -1\n", "recheck_delay_s"),  # time.sleep raises
        ("[camera]\nscan_holdoff_s = -1\n", "scan_holdoff_s"),
        ("[mqtt]\nkeepalive_s = -1\n", "keepalive_s"),  # paho raises in the sync thread
    ],
)
def test_durations_that_would_break_at_runtime_are_config_errors(tmp_path, text, key):
    path = write(tmp_path, MINIMAL + text)
    with pytest.raises(ConfigError, match=key):
        load_config(path)
