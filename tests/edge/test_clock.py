"""The gate's clock with an injected wall clock: never backwards, honest about trust."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from edge.clock import GateClock

FLOOR = 1_790_000_000.0  # what the store persisted last, Unix seconds


class Bench:
    """A wall clock and a monotonic clock the test sets by hand."""

    def __init__(self, wall: float, mono: float = 0.0) -> None:
        self.wall = wall
        self.mono = mono

    def clock(self, trust: str = "assume", floor: float = FLOOR, **kw: object) -> GateClock:
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
