"""The gate's clock with an injected wall clock and kernel: never backwards, honest about trust.

The kernel's clock state is read for real once (`read_kernel_clock`, checked against the C
header's layout and values); the trust logic gets kernel readings through its OS seam.
"""

from __future__ import annotations

import ctypes
import errno
import json
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.errors import SystemClockError
from drivers.systemclock import (
    NTP_PHASE_LIMIT_US,
    STA_UNSYNC,
    TIME_ERROR,
    TIME_OK,
    KernelClock,
    _Timex,
    read_kernel_clock,
)
from edge.clock import UNTRUSTED_EFFECT, GateClock
from edge.config import load_config
from tests.conftest import REPO, run_menwei

FLOOR = 1_790_000_000.0  # what the store persisted last, Unix seconds
STA_PLL = 0x0001


def kernel_reading(maxerror_us: int, *, unsync: bool = False) -> KernelClock:
    """What adjtimex returns: a daemon's PLL, or STA_UNSYNC and TIME_ERROR."""
    status = STA_PLL | (STA_UNSYNC if unsync else 0)
    state = TIME_ERROR if unsync else TIME_OK
    return KernelClock(not unsync, state, status, maxerror_us, maxerror_us // 2, FLOOR)


SYNCED = kernel_reading(40_000)  # chrony with rtcsync, or timesyncd: 40 ms bound
UNSYNCED = kernel_reading(NTP_PHASE_LIMIT_US, unsync=True)  # booted, no daemon yet
CHRONY_NO_RTCSYNC = kernel_reading(25_000, unsync=True)  # STA_UNSYNC kept on purpose


class Kernel:
    """The OS seam: hands out the reading a test sets, or raises, and counts the calls."""

    def __init__(self, reading: KernelClock | OSError = UNSYNCED) -> None:
        self.reading = reading
        self.calls = 0

    def __call__(self) -> KernelClock:
        self.calls += 1
        if isinstance(self.reading, OSError):
            raise self.reading
        return self.reading


class Bench:
    """A wall clock and a monotonic clock the test sets by hand."""

    def __init__(self, wall: float, mono: float = 0.0) -> None:
        self.wall = wall
        self.mono = mono

    def clock(self, trust: str = "assume", floor: float = FLOOR, **kw: object) -> GateClock:
        kw.setdefault("kernel", Kernel())
        return GateClock(
            trust,  # type: ignore[arg-type]
            floor,
            wall=lambda: self.wall,
            monotonic=lambda: self.mono,
            **kw,  # type: ignore[arg-type]
        )

    def tick(self, seconds: float, *, wall: float | None = None) -> None:
        """`seconds` of real time pass; the wall clock follows unless it is set to `wall`."""
        self.mono += seconds
        self.wall = self.wall + seconds if wall is None else wall


def utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def test_a_clock_ahead_of_the_floor_is_used_and_raises_the_floor():
    bench = Bench(FLOOR + 60)
    clock = bench.clock()

    now = clock.now()

    assert (now.utc, now.trusted, clock.floor) == (utc(FLOOR + 60), True, FLOOR + 60)


def test_a_clock_behind_the_floor_is_held_at_the_floor_and_untrusted():
    # A Pi boots after a power cut with its clock in the past; timesyncd has not answered.
    bench = Bench(FLOOR - 86400)
    clock = bench.clock("assume")

    now = clock.now()

    assert (now.utc, now.trusted, clock.floor) == (utc(FLOOR), False, FLOOR)


def test_time_never_goes_back_when_the_wall_clock_is_set_back():
    bench = Bench(FLOOR + 100)
    clock = bench.clock()
    assert clock.now().utc == utc(FLOOR + 100)

    bench.tick(1, wall=FLOOR + 50)  # someone sets the clock back
    behind = clock.now()
    assert (behind.utc, behind.trusted) == (utc(FLOOR + 100), False)

    bench.tick(1, wall=FLOOR + 100.5)  # just past what was handed out: usable again
    again = clock.now()
    assert (again.utc, again.trusted) == (utc(FLOOR + 100.5), True)
    bench.tick(1, wall=FLOOR + 200)
    ahead = clock.now()
    assert (ahead.utc, ahead.trusted, clock.floor) == (utc(FLOOR + 200), True, FLOOR + 200)


def test_trust_modes(tmp_path: Path):
    bench = Bench(FLOOR + 1)
    flag = tmp_path / "synchronized"

    assert bench.clock("assume").now().trusted is True
    assert bench.clock("never").now().trusted is False

    clock = bench.clock("timesyncd", synced_flag=flag)
    assert (clock.synchronised(), clock.now().trusted) == (False, False)
    flag.touch()  # timesyncd says the clock is synchronised
    assert (clock.synchronised(), clock.now().trusted) == (True, True)
    flag.unlink()
    assert (clock.synchronised(), clock.now().trusted) == (False, False)


def test_synchronised_but_behind_the_floor_is_still_untrusted(tmp_path: Path):
    flag = tmp_path / "synchronized"
    flag.touch()
    clock = Bench(FLOOR - 5).clock("timesyncd", synced_flag=flag)
    assert clock.synchronised() is True
    assert clock.now().trusted is False


def test_jumps_are_recorded_and_taken_once():
    bench = Bench(FLOOR + 10)
    clock = bench.clock()
    clock.now()

    bench.tick(5)  # wall follows real time: no jump
    bench.tick(0.5, wall=bench.wall + 2.0)  # 1.5 s of drift: within tolerance
    clock.now()
    assert clock.jumps == []

    bench.tick(1, wall=FLOOR + 3600)  # NTP answers: an hour forward
    clock.now()
    bench.tick(1, wall=FLOOR + 3000)  # and someone sets it back
    clock.now()

    jumps = clock.take_jumps()
    # Expected wall time: the previous reading plus the monotonic time since it.
    assert [(j.from_utc, j.to_utc) for j in jumps] == [
        (utc(FLOOR + 17 + 1), utc(FLOOR + 3600)),
        (utc(FLOOR + 3600 + 1), utc(FLOOR + 3000)),
    ]
    assert [j.seconds for j in jumps] == [3600 - 18, -601]
    assert clock.take_jumps() == []


@given(
    st.lists(
        st.tuples(st.floats(0, 1000), st.floats(-7200, 7200)),  # (real seconds, wall change)
        min_size=1,
        max_size=30,
    ),
    st.floats(-86400, 86400),
)
def test_now_never_goes_back_and_is_never_below_the_floor(steps, start_offset):
    bench = Bench(FLOOR + start_offset)
    clock = bench.clock()
    previous = utc(FLOOR)
    for real, change in steps:
        bench.tick(real, wall=bench.wall + change)
        floor_before = clock.floor
        now = clock.now()
        assert now.utc >= previous and now.utc >= utc(FLOOR)
        assert now.trusted == (bench.wall >= floor_before)
        assert clock.floor == max(bench.wall, floor_before)
        previous = now.utc


def test_jumps_are_counted_and_handed_out_once_for_logging(tmp_path):
    from edge.clock import GateClock

    wall = [1_000_000.0]
    mono = [50.0]
    clock = GateClock("assume", wall=lambda: wall[0], monotonic=lambda: mono[0])
    clock.now()
    wall[0] += 3600  # the wall clock steps an hour while only a second passes
    mono[0] += 1
    clock.now()
    [jump] = clock.take_jumps()
    assert round(jump.seconds) == 3599 and clock.jump_count == 1
    assert clock.take_jumps() == []  # handed out once
    assert clock.jump_count == 1  # still counted for status and metrics


def test_the_daemon_logs_a_clock_jump(gate_dir):
    import io

    from edge.config import load_config
    from edge.daemon import GateDaemon

    daemon = GateDaemon(load_config(gate_dir / "gate.toml"), broker="none", out=io.StringIO())
    try:
        wall = [1_900_000_000.0]
        daemon.clock._wall = lambda: wall[0]
        daemon.clock.now()
        wall[0] -= 600  # stepped back ten minutes
        daemon.clock.now()
        daemon._log_clock_jumps()
        [logged] = list(daemon.store.log())
        assert (logged.event.kind, logged.event.reason) == ("device", "clock_jump")
        assert round(logged.event.detail["seconds"]) == -600
    finally:
        daemon.close()


def test_an_installer_resets_a_floor_persisted_in_the_future(gate_dir):
    import json
    import time

    from edge.config import load_config
    from edge.store import GateStore
    from tests.conftest import run_menwei

    config = load_config(gate_dir / "gate.toml")
    with GateStore(config.db_path) as store:
        store.save_clock_floor(time.time() + 30 * 24 * 3600)  # a bad step to next month
    before = json.loads(run_menwei("gate", "clock", "--config", str(config.path), "--json").stdout)
    assert before["behind_floor_s"] > 29 * 24 * 3600
    out = run_menwei("gate", "clock", "--config", str(config.path), "--reset-floor", "--json")
    after = json.loads(out.stdout)
    assert after["floor_reset_from"] == before["floor"] and after["floor"] == after["wall"]
    with GateStore(config.db_path) as store:
        assert abs(store.clock_floor() - time.time()) < 60


# --- the kernel's clock state, read for real (read-only, no privilege) -----------------------

C_READER = r"""
#include <stdio.h>
#include <stddef.h>
#include <sys/timex.h>
int main(void) {
    struct timex t = {0};
    int state = adjtimex(&t);
    printf("%zu %zu %zu %zu %zu\n", sizeof t, offsetof(struct timex, maxerror),
           offsetof(struct timex, esterror), offsetof(struct timex, status),
           offsetof(struct timex, time));
    printf("%d %d %ld %ld\n", state, t.status, (long)t.maxerror, (long)t.esterror);
    return state < 0;
}
"""


@pytest.fixture(scope="module")
def c_reader(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same read through glibc's own <sys/timex.h>, compiled here."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to check the struct layout against the header")
    d = tmp_path_factory.mktemp("timex")
    (d / "timex.c").write_text(C_READER)
    subprocess.run([cc, "-O0", "-o", str(d / "timex"), str(d / "timex.c")], check=True)
    return d / "timex"


def read_with_c(reader: Path) -> tuple[list[int], tuple[int, ...]]:
    layout, values = subprocess.run(
        [str(reader)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    return [int(v) for v in layout.split()], tuple(int(v) for v in values.split())


def test_the_kernel_clock_state_reads_without_privilege_and_is_consistent():
    before = time.time()
    k = read_kernel_clock()
    after = time.time()

    assert TIME_OK <= k.state <= TIME_ERROR
    assert 0 <= k.maxerror_us <= NTP_PHASE_LIMIT_US and k.esterror_us >= 0
    # The reading's own wall time: a wrong struct layout puts another field here.
    assert before - 1 <= k.wall_s <= after + 1
    assert k.synchronised == (k.state != TIME_ERROR and not k.status & STA_UNSYNC)
    if k.status & STA_UNSYNC:  # the kernel answers TIME_ERROR whenever it is set (ntp.c)
        assert k.state == TIME_ERROR and not k.synchronised
    assert k.disciplined == (k.synchronised or k.maxerror_us < NTP_PHASE_LIMIT_US)


def test_the_struct_layout_and_values_match_the_c_header(c_reader: Path):
    layout, _ = read_with_c(c_reader)
    assert layout == [
        ctypes.sizeof(_Timex),
        _Timex.maxerror.offset,
        _Timex.esterror.offset,
        _Timex.status.offset,
        _Timex.time.offset,
    ]
    # maxerror grows each second and a daemon may correct it any time: compare when two
    # Python readings around the C one agree.
    for _ in range(20):
        first = read_kernel_clock()
        _, c_values = read_with_c(c_reader)
        second = read_kernel_clock()
        seen = (first.state, first.status, first.maxerror_us, first.esterror_us)
        if seen == (second.state, second.status, second.maxerror_us, second.esterror_us):
            assert c_values == seen
            return
    pytest.fail("the kernel's clock state never held still for three reads")


def test_reading_the_kernel_off_linux_is_a_typed_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sys, "platform", "darwin")  # the OS, not our code
    with pytest.raises(SystemClockError, match="Linux only") as err:
        read_kernel_clock()
    assert isinstance(err.value, OSError)


# --- trust from the kernel, through the OS seam ----------------------------------------------


@pytest.mark.parametrize(
    ("reading", "trusted"),
    [(SYNCED, True), (UNSYNCED, False), (CHRONY_NO_RTCSYNC, True)],
    ids=["synchronised", "unsynchronised", "chrony-without-rtcsync"],
)
def test_kernel_trust_follows_the_kernel(reading: KernelClock, trusted: bool):
    clock = Bench(FLOOR + 1).clock("kernel", kernel=Kernel(reading))

    verdict = clock.assess()

    assert (verdict.synchronised, verdict.source, verdict.kernel) == (trusted, "kernel", reading)
    assert clock.now().trusted is trusted
    out = verdict.to_json()
    assert (out["source"], out["synchronised"], out["maxerror_us"], out["esterror_us"]) == (
        "kernel",
        trusted,
        reading.maxerror_us,
        reading.esterror_us,
    )
    assert ("effect" in out, "fix" in out) == (not trusted, not trusted)


def test_trust_follows_the_kernel_as_soon_as_the_daemon_synchronises():
    kernel = Kernel(UNSYNCED)
    bench = Bench(FLOOR + 1)
    clock = bench.clock("kernel", kernel=kernel)
    assert clock.now().trusted is False

    kernel.reading = SYNCED  # chrony answered
    bench.tick(1)
    assert clock.now().trusted is True
    kernel.reading = UNSYNCED  # chrony gave up: maxerror back at 16 s, STA_UNSYNC set
    bench.tick(1)
    assert clock.now().trusted is False


def test_a_maximum_error_above_the_bound_is_not_trusted():
    drifting = kernel_reading(9_000_000)  # 9 s: no correction for hours (0.5 ms a second)
    bench = Bench(FLOOR + 1)

    bounded = bench.clock("kernel", kernel=Kernel(drifting), max_error_ms=5000)
    verdict = bounded.assess()
    assert (verdict.synchronised, bounded.now().trusted) == (False, False)
    assert "maxerror 9000 ms" in verdict.detail() and "max_error_ms = 5000" in verdict.detail()
    assert "chronyc sources" in verdict.fix()

    at_bound = bench.clock("kernel", kernel=Kernel(kernel_reading(5_000_000)), max_error_ms=5000)
    assert at_bound.assess().synchronised is True
    # The default bound is the kernel's own 16 s limit.
    assert bench.clock("kernel", kernel=Kernel(drifting)).assess().synchronised is True


@pytest.mark.parametrize(
    ("error", "fix"),
    [
        (SystemClockError(errno.EPERM, "adjtimex: Operation not permitted"), "ProtectClock="),
        (SystemClockError("the kernel's clock state is read on Linux only"), 'trust = "assume"'),
    ],
    ids=["seccomp", "not-linux"],
)
def test_an_unreadable_kernel_leaves_the_clock_untrusted_and_says_why(
    error: SystemClockError, fix: str
):
    clock = Bench(FLOOR + 1).clock("kernel", kernel=Kernel(error))

    assert clock.now().trusted is False  # no exception out of now()
    verdict = clock.assess()
    assert (verdict.synchronised, verdict.kernel, verdict.kernel_error) == (False, None, str(error))
    assert fix in verdict.fix() and str(error) in verdict.detail()
    out = verdict.to_json()
    assert out["kernel_error"] == str(error) and "maxerror_us" not in out


def test_timesyncd_trust_is_the_kernel_or_else_timesyncds_flag(tmp_path: Path):
    flag = tmp_path / "synchronized"
    kernel = Kernel(SYNCED)
    clock = Bench(FLOOR + 1).clock("timesyncd", kernel=kernel, synced_flag=flag)

    def verdict() -> tuple[bool, str]:
        v = clock.assess()
        return v.synchronised, v.source

    assert verdict() == (True, "kernel")  # chrony keeps the time: no flag, still trusted
    kernel.reading = UNSYNCED
    assert verdict() == (False, "timesyncd")
    flag.touch()  # timesyncd synchronised once since boot, then lost its server for hours
    assert verdict() == (True, "timesyncd")
    kernel.reading = SystemClockError(errno.EPERM, "adjtimex: Operation not permitted")
    assert verdict() == (True, "timesyncd")


def test_assume_and_never_do_not_ask_the_kernel():
    kernel = Kernel(SystemClockError("the kernel's clock state is read on Linux only"))
    bench = Bench(FLOOR + 1)
    assert bench.clock("assume", kernel=kernel).now().trusted is True
    never = bench.clock("never", kernel=kernel)
    assert never.now().trusted is False
    assert 'trust = "kernel"' in never.assess().fix()
    assert kernel.calls == 0


def test_the_shipped_gate_unit_lets_the_gate_read_the_clock_state():
    unit = (REPO / "systemd" / "menwei-gate.service").read_text(encoding="utf-8")
    settings = [line for line in unit.splitlines() if line and not line.startswith("#")]
    assert not [s for s in settings if s.startswith("ProtectClock=")]
    assert not [s for s in settings if s.startswith("SystemCallFilter=") and "@clock" in s]


# --- menwei gate clock ------------------------------------------------------------------------


def clock_json(config: Path) -> dict[str, object]:
    out = run_menwei("gate", "clock", "--config", str(config), "--json").stdout
    result: dict[str, object] = json.loads(out)
    return result


def test_gate_clock_reports_source_synchronised_and_the_kernels_error_bounds(gate_dir: Path):
    toml = gate_dir / "gate.toml"
    assumed = clock_json(toml)  # the simulated gate assumes
    assert (assumed["source"], assumed["synchronised"], assumed["trusted"]) == (
        "assume",
        True,
        True,
    )
    assert {"wall", "floor", "behind_floor_s"} <= assumed.keys()
    assert "maxerror_us" not in assumed

    toml.write_text(toml.read_text().replace('trust = "assume"', 'trust = "kernel"'))
    assert load_config(toml).clock.trust == "kernel"
    before = read_kernel_clock()
    out = clock_json(toml)
    after = read_kernel_clock()

    assert (out["source"], out["trust"], out["max_error_ms"]) == ("kernel", "kernel", 16000)
    maxerror, esterror = out["maxerror_us"], out["esterror_us"]
    assert isinstance(maxerror, int) and 0 <= maxerror <= NTP_PHASE_LIMIT_US
    assert isinstance(esterror, int) and esterror >= 0
    assert out["synchronised"] in (before.disciplined, after.disciplined)
    assert out["trusted"] == (out["synchronised"] and out["behind_floor_s"] == 0)
    if not out["synchronised"]:
        assert out["effect"] == UNTRUSTED_EFFECT and out["fix"]

    human = run_menwei("gate", "clock", "--config", str(toml)).stdout
    assert "source: kernel" in human and "maxerror_us: " in human and "synchronised: " in human


def test_gate_clock_says_what_an_untrusted_clock_does(gate_dir: Path):
    toml = gate_dir / "gate.toml"
    toml.write_text(toml.read_text().replace('trust = "assume"', 'trust = "never"'))

    out = clock_json(toml)
    assert (out["source"], out["synchronised"], out["trusted"]) == ("never", False, False)
    effect = str(out["effect"])
    assert "guard_confirm" in effect and "请门卫人工核验" in effect
    assert 'trust = "kernel"' in str(out["fix"])
