"""Dangerous server.toml values: each refused alike by `menwei server doctor` (the server's
check-config), `server run` and `server status` (every command loads server.toml through the
one loader), exit 2, no traceback. The directory is valid but for the value under test."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from menwei.cli import main
from server.config import CONFIG_NAME
from server.site import Site
from tests.conftest import SITE
from tests.tomlfile import rewrite

DANGEROUS: list[tuple[dict[str, Any], str]] = [
    ({"mqtt.broker": "ftp://10.0.0.2:21"}, "scheme must be mqtt:// or mqtts://"),
    ({"mqtt.broker": "mqtt://10.0.0.2:0"}, "the port must be 1..65535"),
    ({"mqtt.broker": "mqtt://collector:pw@10.0.0.2"}, "no user or password in the URL"),
    ({"server.pass_days": 10**6}, "pass_days must be 1..3660 days, got 1000000"),
    ({"server.freshness_interval_s": math.nan}, "freshness_interval_s: expected a finite number"),
    ({"policy.fever_threshold_c": math.nan}, "fever_threshold_c: expected a finite number"),
    ({"policy.fever_threshold_c": 99.9}, "fever_threshold_c must be 34..42 °C, got 99.9"),
    ({"policy.household_max_out": 10**9}, "household_max_out must be 0..100"),
    ({"policy.household_max_exits_per_day": -1}, "household_max_exits_per_day must be 0..100"),
    ({"policy.max_data_age_h": math.inf}, "max_data_age_h: expected a finite number"),
    ({"alerts.gate_offline_after_min": -5.0}, "gate_offline_after_min must be 0.1..1440 min"),
    ({"alerts.webhook_timeout_s": math.inf}, "webhook_timeout_s: expected a finite number"),
    ({"alerts.webhook_queue": 10**9}, "webhook_queue must be 1..10000"),
    ({"alerts.webhook_url": "http://"}, "webhook_url must be http://HOST/... or https://HOST/..."),
    ({"alerts.webhook_url": "file:///etc/shadow"}, "webhook_url must be http://HOST/..."),
    ({"privacy.visitor_retention_days": 0}, "visitor_retention_days must be 1..3650 days, got 0"),
]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("server-ranges")
    with Site.init(root / "server", SITE):
        pass
    yield root / "server"


def variant(template: Path, tmp_path: Path, overrides: dict[str, Any]) -> Path:
    directory = tmp_path / "server"
    shutil.copytree(template, directory)
    rewrite(template / CONFIG_NAME, directory / CONFIG_NAME, overrides)
    return directory


def test_the_valid_variant_passes_the_doctor(template: Path, tmp_path: Path) -> None:
    assert main(["server", "doctor", str(variant(template, tmp_path, {}))]) == 0


@pytest.mark.parametrize(("overrides", "says"), DANGEROUS, ids=lambda v: str(v)[:60])
def test_doctor_run_and_status_refuse_it_alike(
    template: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    overrides: dict[str, Any],
    says: str,
) -> None:
    directory = variant(template, tmp_path, overrides)
    outcomes = set()
    for command in ("doctor", "run", "status"):
        code = main(["server", command, str(directory)])
        outcomes.add((code, capsys.readouterr().err))
    ((code, err),) = outcomes  # one outcome: the same message from each
    assert code == 2 and says in err and str(directory / CONFIG_NAME) in err
    assert err.startswith("menwei: error: ") and "Traceback" not in err


def test_doctor_loads_the_tls_files_as_run_does(
    template: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 11 (a new user): with `ca_file = "broker/nope.pem"` the doctor passed (exit 0)
    and `server run` stopped. Now the doctor fails with the line `server run` prints."""
    tls = {"mqtt.broker": "mqtts://localhost:8883", "mqtt.ca_file": "broker/ca.pem"}
    directory = variant(template, tmp_path, tls)
    assert main(["broker", "setup", str(directory / "broker"), "--host", "localhost"]) == 0
    capsys.readouterr()
    assert main(["server", "doctor", str(directory), "--json"]) == 0
    checks = {c["check"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert checks["broker"]["ok"] is True and "ca_file" in checks["broker"]["detail"]

    rewrite(directory / CONFIG_NAME, directory / CONFIG_NAME, {"mqtt.ca_file": "broker/nope.pem"})
    assert main(["server", "run", str(directory)]) == 2
    err = capsys.readouterr().err
    line = err.removeprefix("menwei: error: ").strip()
    assert f"[mqtt] ca_file {directory.resolve() / 'broker' / 'nope.pem'}" in line, err
    assert main(["server", "doctor", str(directory), "--json"]) == 1
    checks = {c["check"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert checks["broker"]["ok"] is False and checks["broker"]["detail"] == line
