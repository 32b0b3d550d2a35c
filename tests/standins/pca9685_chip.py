"""A register-level model of the NXP PCA9685 behind smbus2's ``SMBus`` interface.

The chip cannot exist here, so this models what the driver talks to, from the product data
sheet (rev. 4), and computes the pulse widths the chip would put out on its pins from its
registers -- never from the driver's arithmetic:

* MODE1 (00h) resets to 0x11 (SLEEP, ALLCALL), MODE2 (01h) to 0x04 (OUTDRV), PRE_SCALE (FEh)
  to 30 (200 Hz), every LEDn_OFF_H to 0x10 (full OFF); bits 7:5 of LEDn_ON_H/OFF_H read 0.
* PRE_SCALE writes are blocked unless MODE1.SLEEP is 1; the hardware forces at least 3.
* SLEEP stops the oscillator: no pulses. Sleeping while PWM runs sets MODE1.RESTART; after
  waking, the channels stay off until RESTART is written with 1 (at least 500 us after the
  wake, else ``restart_too_soon`` counts it) or any PWM register is written (MODE2.OCH = 0).
* With MODE1.AI the register pointer advances after each byte, from 45h back to 00h and from
  FAh to FEh then 00h; without AI every byte of a transaction lands in the same register.
* ALL_LED_ON/OFF (FAh-FDh) write the same value into every channel and read back 0.
* Outputs change at the I2C STOP (MODE2.OCH = 0): ``trace`` records every channel's output
  after each write transaction, so a pulse width that existed only between two transactions
  (a torn update) is visible.
* Output of channel n: none while asleep or held for RESTART; full OFF wins over full ON; else
  (OFF - ON) mod 4096 counts of (PRE_SCALE + 1) / 25 MHz each, inverted by MODE2.INVRT.
* Reserved registers (46h-F9h) and the test mode register (FFh) are not acknowledged: the
  write fails with EREMOTEIO, as smbus2 reports a NACK on a Raspberry Pi.

``ModelI2C`` is the bus: ``open(n)`` returns an SMBus-like handle to ``/dev/i2c-n`` (missing
bus: FileNotFoundError as smbus2 raises), with faults to inject: ``fail_next(k)`` (k calls fail
with EREMOTEIO, like electrical noise), ``unplug()`` / ``plug()`` (the board off the bus).
"""

from __future__ import annotations

import errno
import threading
import time

OSC_HZ = 25_000_000
MODE1, MODE2, PRE_SCALE, TEST_MODE = 0x00, 0x01, 0xFE, 0xFF
ALL_LED_ON_L = 0xFA
RESTART, SLEEP, AI = 0x80, 0x10, 0x20
INVRT, OCH, OUTDRV = 0x10, 0x08, 0x04
FULL = 0x10


def led_base(ch: int) -> int:
    return 0x06 + 4 * ch


class PCA9685Chip:
    def __init__(self) -> None:
        self.power_cycle()

    def power_cycle(self) -> None:
        self.regs = bytearray(256)
        self.regs[MODE1], self.regs[MODE2], self.regs[PRE_SCALE] = 0x11, 0x04, 30
        for ch in range(16):
            self.regs[led_base(ch) + 3] = FULL
        self.held = False  # channels stopped for RESTART after a sleep while running
        self.woke_at = 0.0
        self.restart_too_soon = 0
        self.prescale_blocked = 0
        self.trace: list[tuple[float | None, ...]] = []

    # -- registers --------------------------------------------------------------------------
    def _running(self) -> bool:
        return not self.regs[MODE1] & SLEEP and not self.held and any(self.ticks(ch) for ch in range(16))

    def _write_mode1(self, value: int) -> None:
        old = self.regs[MODE1]
        now = time.monotonic()
        restart = bool(old & RESTART)
        if value & SLEEP and not old & SLEEP and self._running():
            self.held = restart = True  # set at the end of the PWM cycle
        if not value & SLEEP and old & SLEEP:
            self.woke_at = now
        if value & RESTART and restart and not value & SLEEP:
            if now - self.woke_at < 500e-6:
                self.restart_too_soon += 1
            self.held = restart = False  # writing 1 restarts the channels; writing 0 does nothing
        self.regs[MODE1] = (value & ~RESTART) | (RESTART if restart else 0)

    def _write(self, reg: int, value: int) -> None:
        if 0x46 <= reg <= 0xF9 or reg == TEST_MODE:
            raise OSError(errno.EREMOTEIO, "Remote I/O error")
        if reg == MODE1:
            self._write_mode1(value)
        elif reg == PRE_SCALE:
            if self.regs[MODE1] & SLEEP:
                self.regs[PRE_SCALE] = max(3, value)
            else:
                self.prescale_blocked += 1
        elif reg >= ALL_LED_ON_L:
            for ch in range(16):
                self._write_led(led_base(ch) + reg - ALL_LED_ON_L, value)
        elif reg >= 0x06:
            self._write_led(reg, value)
        else:
            self.regs[reg] = value & 0x1F if reg == MODE2 else value

    def _write_led(self, reg: int, value: int) -> None:
        self.regs[reg] = value & 0x1F if (reg - 0x06) % 2 else value
        if self.held and not self.regs[MODE2] & OCH:
            self.held = False
            self.regs[MODE1] &= ~RESTART

    def _next(self, reg: int) -> int:
        if not self.regs[MODE1] & AI:
            return reg
        return 0 if reg in (0x45, PRE_SCALE) else reg + 1

    def write(self, reg: int, data: list[int]) -> None:
        """One write transaction: the control register, then the data bytes, then STOP."""
        for value in data:
            self._write(reg, value & 0xFF)
            reg = self._next(reg)
        self.trace.append(tuple(self.pulse_us(ch) for ch in range(16)))

    def read(self, reg: int, n: int) -> list[int]:
        out = []
        for _ in range(n):
            if 0x46 <= reg <= 0xF9 or reg == TEST_MODE:
                raise OSError(errno.EREMOTEIO, "Remote I/O error")
            out.append(0 if ALL_LED_ON_L <= reg < PRE_SCALE else self.regs[reg])
            reg = self._next(reg)
        return out

    # -- the pins ---------------------------------------------------------------------------
    def frequency_hz(self) -> float:
        return OSC_HZ / (4096 * (self.regs[PRE_SCALE] + 1))

    def ticks(self, ch: int) -> int:
        on_l, on_h, off_l, off_h = self.regs[led_base(ch) : led_base(ch) + 4]
        if off_h & FULL:
            return 0
        if on_h & FULL:
            return 4096
        return ((((off_h & 0xF) << 8) | off_l) - (((on_h & 0xF) << 8) | on_l)) % 4096

    def pulse_us(self, ch: int) -> float | None:
        """The high time of channel ``ch``'s pulse in microseconds; None: no pulse at all."""
        if self.regs[MODE1] & SLEEP or self.held:
            return None
        ticks = self.ticks(ch)
        if self.regs[MODE2] & INVRT:
            ticks = 4096 - ticks
        return None if ticks == 0 else ticks * (self.regs[PRE_SCALE] + 1) * 1e6 / OSC_HZ


class ModelBus:
    """The SMBus-like handle the driver gets (smbus2.SMBus's method names and arguments)."""

    def __init__(self, i2c: ModelI2C) -> None:
        self.i2c = i2c
        self.closed = False

    def _chip(self, addr: int) -> PCA9685Chip:
        i2c = self.i2c
        with i2c.lock:
            if self.closed:
                raise OSError(errno.EBADF, "Bad file descriptor")
            if i2c.failures:
                i2c.failures -= 1
                raise OSError(errno.EREMOTEIO, "Remote I/O error")
            chip = i2c.chips.get(addr)
            if chip is None or i2c.unplugged:
                raise OSError(errno.EREMOTEIO, "Remote I/O error")  # nobody acknowledges the address
            i2c.calls += 1
            return chip

    def read_byte_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int:
        return self._chip(i2c_addr).read(register, 1)[0]

    def write_byte_data(self, i2c_addr: int, register: int, value: int, force: bool | None = None) -> None:
        self._chip(i2c_addr).write(register, [value])

    def read_i2c_block_data(
        self, i2c_addr: int, register: int, length: int, force: bool | None = None
    ) -> list[int]:
        return self._chip(i2c_addr).read(register, length)

    def write_i2c_block_data(
        self, i2c_addr: int, register: int, data: list[int], force: bool | None = None
    ) -> None:
        if len(data) > 32:
            raise ValueError("Data length cannot exceed 32 bytes")
        self._chip(i2c_addr).write(register, list(data))

    def close(self) -> None:
        self.closed = True


class ModelI2C:
    """An I2C bus number with chips on it, and the faults a car's wiring produces."""

    def __init__(self, bus: int = 1, chips: dict[int, PCA9685Chip] | None = None) -> None:
        self.bus = bus
        self.chips = chips if chips is not None else {0x40: PCA9685Chip()}
        self.lock = threading.Lock()
        self.failures = 0
        self.unplugged = False
        self.opens = 0
        self.calls = 0

    def open(self, bus: int) -> ModelBus:
        if bus != self.bus:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", f"/dev/i2c-{bus}")
        self.opens += 1
        return ModelBus(self)

    def fail_next(self, k: int) -> None:
        with self.lock:
            self.failures = k

    def unplug(self) -> None:
        self.unplugged = True

    def plug(self) -> None:
        self.unplugged = False
