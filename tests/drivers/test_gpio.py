"""The pin seam: FakePins as a strict recording peer, RPiGPIOPins over a fake RPi.GPIO module."""

from __future__ import annotations

import pytest

from drivers.errors import GpioError
from drivers.gpio import FakePins, FakeRPiGPIO, PinChange, RPiGPIOPins
from drivers.inputs import DoorContact, ExitButton
from drivers.outputs import ManualScheduler

EXIT_PIN, DOOR_PIN, RELAY_PIN = 5, 6, 17


@pytest.fixture
def sched() -> ManualScheduler:
    return ManualScheduler()


@pytest.fixture
def pins(sched: ManualScheduler) -> FakePins:
    return FakePins(clock=sched.now)


# -- FakePins ------------------------------------------------------------------


def test_fake_pins_record_every_output_change_with_its_time(pins, sched):
    pins.setup_output(RELAY_PIN, initial=False)
    sched.advance(0.5)
    pins.write(RELAY_PIN, True)
    pins.write(RELAY_PIN, True)  # no change, no entry
    sched.advance(1.25)
    pins.write(RELAY_PIN, False)

    assert pins.history == [
        PinChange(0.0, RELAY_PIN, False),
        PinChange(0.5, RELAY_PIN, True),
        PinChange(1.75, RELAY_PIN, False),
    ]
    assert pins.level(RELAY_PIN) is False


def test_fake_pins_inputs_start_at_their_pull(pins):
    pins.setup_input(EXIT_PIN, pull_up=True)
    pins.setup_input(DOOR_PIN, pull_up=False)

    assert (pins.read(EXIT_PIN), pins.read(DOOR_PIN)) == (True, False)
    assert pins.history == []


def test_drive_fires_edge_callbacks_with_the_new_level(pins):
    edges: list[tuple[int, bool]] = []
    pins.setup_input(EXIT_PIN, pull_up=True)
    pins.add_edge_callback(EXIT_PIN, lambda pin, level: edges.append((pin, level)), 0)

    pins.drive(EXIT_PIN, False)
    pins.drive(EXIT_PIN, False)  # same level: not an edge
    pins.drive(EXIT_PIN, True)

    assert edges == [(EXIT_PIN, False), (EXIT_PIN, True)]


def test_drive_honours_bouncetime_on_the_injected_clock(pins, sched):
    edges: list[bool] = []
    pins.setup_input(EXIT_PIN, pull_up=True)
    pins.add_edge_callback(EXIT_PIN, lambda pin, level: edges.append(level), 50)

    pins.drive(EXIT_PIN, False)
    sched.advance(0.010)
    pins.drive(EXIT_PIN, True)  # contact bounce, inside 50 ms
    sched.advance(0.010)
    pins.drive(EXIT_PIN, False)  # inside 50 ms: ignored too
    sched.advance(0.100)
    pins.drive(EXIT_PIN, True)  # the real release

    assert edges == [False, True]


@pytest.mark.parametrize(
    "misuse",
    [
        lambda p: p.write(RELAY_PIN, True),  # never set up
        lambda p: p.read(RELAY_PIN),
        lambda p: p.write(EXIT_PIN, True),  # an input
        lambda p: p.drive(DOOR_PIN, True),  # an output
        lambda p: p.add_edge_callback(DOOR_PIN, lambda pin, level: None, 0),  # an output
        lambda p: p.setup_output(EXIT_PIN, initial=False),  # already an input
        lambda p: p.setup_output(28, initial=False),  # not a header pin
        lambda p: p.setup_input(-1, pull_up=True),
    ],
)
def test_fake_pins_reject_misuse(pins, misuse):
    pins.setup_input(EXIT_PIN, pull_up=True)
    pins.setup_output(DOOR_PIN, initial=False)

    with pytest.raises(GpioError):
        misuse(pins)


def test_fake_pins_close_is_idempotent_and_final(pins):
    with pins:
        pins.setup_output(RELAY_PIN, initial=False)
    pins.close()

    with pytest.raises(GpioError):
        pins.write(RELAY_PIN, True)


# -- RPiGPIOPins over the fake module ------------------------------------------


@pytest.fixture
def gpio() -> FakeRPiGPIO:
    return FakeRPiGPIO()


def test_rpi_backend_drives_the_module_api_in_bcm_mode(gpio):
    pins = RPiGPIOPins(gpio_module=gpio)
    pins.setup_output(RELAY_PIN, initial=True)
    pins.setup_input(EXIT_PIN, pull_up=True)
    pins.setup_input(DOOR_PIN, pull_up=False)
    pins.write(RELAY_PIN, False)
    assert pins.read(EXIT_PIN) is True
    pins.close()
    pins.close()

    assert gpio.calls == [
        ("setwarnings", False),
        ("setmode", gpio.BCM),
        ("setup", RELAY_PIN, gpio.OUT, {"pull_up_down": gpio.PUD_OFF, "initial": gpio.HIGH}),
        ("setup", EXIT_PIN, gpio.IN, {"pull_up_down": gpio.PUD_UP, "initial": -1}),
        ("setup", DOOR_PIN, gpio.IN, {"pull_up_down": gpio.PUD_DOWN, "initial": -1}),
        ("output", RELAY_PIN, gpio.LOW),
        ("input", EXIT_PIN),
        ("cleanup", sorted([RELAY_PIN, EXIT_PIN, DOOR_PIN])),
    ]
    assert gpio.channels == {}


def test_rpi_backend_edge_callback_reports_channel_and_level(gpio):
    pins = RPiGPIOPins(gpio_module=gpio)
    edges: list[tuple[int, bool]] = []
    pins.setup_input(EXIT_PIN, pull_up=True)
    pins.add_edge_callback(EXIT_PIN, lambda pin, level: edges.append((pin, level)), 50)

    gpio.set_input(EXIT_PIN, False)
    gpio.set_input(EXIT_PIN, True)

    assert edges == [(EXIT_PIN, False), (EXIT_PIN, True)]
    assert ("add_event_detect", EXIT_PIN, gpio.BOTH, {"bouncetime": 50}) in gpio.calls


def test_rpi_backend_omits_zero_bouncetime_which_rpi_gpio_rejects(gpio):
    pins = RPiGPIOPins(gpio_module=gpio)
    pins.setup_input(EXIT_PIN, pull_up=True)

    pins.add_edge_callback(EXIT_PIN, lambda pin, level: None, 0)

    assert gpio.calls[-1] == ("add_event_detect", EXIT_PIN, gpio.BOTH, {"bouncetime": None})


def test_rpi_backend_turns_library_errors_into_gpio_errors(gpio):
    pins = RPiGPIOPins(gpio_module=gpio)
    pins.setup_input(EXIT_PIN, pull_up=True)
    pins.add_edge_callback(EXIT_PIN, lambda pin, level: None, 50)

    with pytest.raises(GpioError, match="Conflicting edge detection"):
        pins.add_edge_callback(EXIT_PIN, lambda pin, level: None, 50)


def test_rpi_backend_checks_direction_before_calling_the_library(gpio):
    pins = RPiGPIOPins(gpio_module=gpio)
    pins.setup_input(EXIT_PIN, pull_up=True)
    calls_before = len(gpio.calls)

    with pytest.raises(GpioError):
        pins.write(EXIT_PIN, True)
    assert len(gpio.calls) == calls_before


def test_rpi_backend_cleans_up_only_its_own_pins(gpio):
    gpio.setmode(gpio.BCM)
    gpio.setup(26, gpio.OUT)  # someone else's pin in the same process
    pins = RPiGPIOPins(gpio_module=gpio)
    pins.setup_output(RELAY_PIN, initial=False)

    pins.close()

    assert list(gpio.channels) == [26]


def test_rpi_backend_without_rpi_gpio_raises_gpio_error():
    # On a laptop/CI RPi.GPIO is absent or refuses to import off a Pi.
    try:
        import RPi.GPIO  # noqa: F401
    except (ImportError, RuntimeError):
        pass
    else:
        pytest.skip("running on a Raspberry Pi")
    with pytest.raises(GpioError):
        RPiGPIOPins()


# -- inputs, driven through both backends ---------------------------------------


def test_exit_button_calls_on_press_once_per_press(pins, sched):
    presses: list[float] = []
    button = ExitButton(pins, EXIT_PIN, lambda: presses.append(sched.now()))

    pins.drive(EXIT_PIN, False)  # pressed: pulled to GND
    sched.advance(0.2)
    pins.drive(EXIT_PIN, True)  # released
    sched.advance(1.0)
    pins.drive(EXIT_PIN, False)

    assert presses == [0.0, 1.2]
    assert button.is_pressed


def test_exit_button_contact_bounce_is_one_press(pins, sched):
    presses: list[float] = []
    ExitButton(pins, EXIT_PIN, lambda: presses.append(sched.now()), bouncetime_ms=50)

    for _ in range(3):
        pins.drive(EXIT_PIN, False)
        sched.advance(0.005)
        pins.drive(EXIT_PIN, True)
        sched.advance(0.005)
    pins.drive(EXIT_PIN, False)

    assert presses == [0.0]


def test_door_contact_reports_open_and_closed(pins):
    changes: list[bool] = []
    pins.setup_input(DOOR_PIN, pull_up=True)
    pins.drive(DOOR_PIN, False)  # door shut at start: contact closed, pin low
    door = DoorContact(pins, DOOR_PIN, changes.append, bouncetime_ms=0)
    assert not door.is_open

    pins.drive(DOOR_PIN, True)  # opened
    pins.drive(DOOR_PIN, False)  # shut

    assert changes == [True, False]


def test_door_contact_with_cut_wire_reads_open(pins):
    door = DoorContact(pins, DOOR_PIN, lambda is_open: None)

    assert door.is_open  # pull-up, nothing pulling low


def test_closed_input_stops_reporting(pins):
    presses: list[int] = []
    with ExitButton(pins, EXIT_PIN, lambda: presses.append(1), bouncetime_ms=0):
        pins.drive(EXIT_PIN, False)
    pins.drive(EXIT_PIN, True)
    pins.drive(EXIT_PIN, False)

    assert presses == [1]


def test_exit_button_over_the_rpi_backend(gpio):
    presses: list[int] = []
    ExitButton(RPiGPIOPins(gpio_module=gpio), EXIT_PIN, lambda: presses.append(1))

    gpio.set_input(EXIT_PIN, False)
    gpio.set_input(EXIT_PIN, True)

    assert presses == [1]
    assert ("setup", EXIT_PIN, gpio.IN, {"pull_up_down": gpio.PUD_UP, "initial": -1}) in gpio.calls


def test_bounce_that_slips_past_the_library_is_not_a_second_press(gpio):
    presses: list[int] = []
    button = ExitButton(RPiGPIOPins(gpio_module=gpio), EXIT_PIN, lambda: presses.append(1))

    gpio.set_input(EXIT_PIN, False)
    gpio.fire_edge(EXIT_PIN)  # a second edge whose callback still reads "pressed"

    assert presses == [1]
    assert button.is_pressed


def test_door_contact_reports_each_real_change_once_over_the_rpi_backend(gpio):
    changes: list[bool] = []
    DoorContact(RPiGPIOPins(gpio_module=gpio), DOOR_PIN, changes.append)  # cut wire: open

    gpio.set_input(DOOR_PIN, False)  # shut
    gpio.fire_edge(DOOR_PIN)  # bounce
    gpio.set_input(DOOR_PIN, True)  # opened

    assert changes == [False, True]
