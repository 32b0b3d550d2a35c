/*
 * ep_hw_avr.c - the only hardware-specific file of the firmware (ATmega328P at
 * 16 MHz: Arduino Uno / Nano). Everything it does is move bytes and times in
 * and out of ep_device.c:
 *
 *   USART0 (D0/D1, the USB serial of an Uno/Nano), EP_BAUD 8N1, RX and TX by
 *     interrupt into small ring buffers, so a burst never stalls the loop;
 *   Timer1 fast PWM, TOP = ICR1 = 39999 at clk/8: 0.5 us resolution, 50 Hz
 *     frame, the standard RC servo/ESC signal. OC1A = PB1 = D9 steering,
 *     OC1B = PB2 = D10 throttle. OCR1x are double-buffered by the hardware, so
 *     a new width never produces a torn pulse;
 *   Timer2 CTC at 1 kHz: the millisecond clock of the failsafe. Timer0 is left
 *     alone so the Arduino core's millis()/delay() keep working in the sketch;
 *   the RC receiver on A0 (PC0) steering, A1 (PC1) throttle, A2 (PC2) aux / kill
 *     switch: inputs with pull-ups (an unplugged channel reads a steady high, no
 *     pulses), one pin-change interrupt (PCINT1) for the three. The ISR stamps each
 *     edge with TCNT1, Timer1's 0.5 us count that wraps every 20 ms, so a pulse width
 *     is the difference of two stamps modulo the 40000-tick period -- no extra timer.
 *     Port C is free of the UART (PD0/PD1), the PWM outputs (PB1/PB2) and Timer2's
 *     pins (PB3, PD3);
 *   the EEPROM: the kill-switch settings, written a byte at a time between loop
 *     passes (never waiting on a write), read back at reset;
 *   the watchdog (120 ms): if this loop ever hangs, the chip resets and comes
 *     back up at neutral.
 */
#if defined(__AVR__)
#include "ep_hw_avr.h"

#include <avr/eeprom.h>
#include <avr/interrupt.h>
#include <avr/io.h>
#include <avr/sleep.h>
#include <avr/wdt.h>

#include "ep_device.h"

#ifndef F_CPU
#define F_CPU 16000000UL
#endif
#ifndef EP_BAUD
#define EP_BAUD 115200UL
#endif

#define RX_SIZE 64 /* powers of two: the index wrap is a mask */
#define TX_SIZE 64
#define PWM_TOP 39999u /* ICR1: 20 ms at 0.5 us per tick */
#define RC_PINS (_BV(PC0) | _BV(PC1) | _BV(PC2))
#define EE_RC ((uint8_t *)16) /* where the kill-switch settings live in the EEPROM */

static volatile uint8_t rx_buf[RX_SIZE], rx_head, rx_tail;
static volatile uint8_t tx_buf[TX_SIZE], tx_head, tx_tail;
static volatile uint32_t ms_clock;
static volatile uint16_t rc_rise[EP_RC_CHANNELS], rc_width[EP_RC_CHANNELS]; /* Timer1 ticks */
static volatile uint8_t rc_pins, rc_fresh, rc_high; /* rc_high: rise seen, fall pending */
static uint8_t ee_shadow[EP_RC_PERSIST_LEN]; /* what the EEPROM holds */
static ep_device_t dev;

ISR(TIMER2_COMPA_vect) { ms_clock++; }

ISR(PCINT1_vect)
{
    uint16_t t = TCNT1; /* first: the stamp is as close to the edge as the ISR can get */
    uint8_t pins = PINC;
    uint8_t changed = (uint8_t)((pins ^ rc_pins) & RC_PINS);
    rc_pins = pins;
    for (uint8_t ch = 0; ch < EP_RC_CHANNELS; ch++) {
        uint8_t bit = (uint8_t)_BV(ch); /* PC0..PC2 are channels 0..2 */
        if (!(changed & bit))
            continue;
        if (pins & bit) {
            rc_rise[ch] = t;
            rc_high |= bit;
        } else if (rc_high & bit) { /* a fall with no rise seen (power-up mid-pulse) is no pulse */
            uint16_t rise = rc_rise[ch];
            rc_width[ch] = t >= rise ? (uint16_t)(t - rise) : (uint16_t)(t + PWM_TOP + 1u - rise);
            rc_fresh |= bit;
            rc_high &= (uint8_t)~bit;
        }
    }
}

ISR(USART_RX_vect)
{
    uint8_t b = UDR0;
    uint8_t next = (uint8_t)((rx_head + 1) & (RX_SIZE - 1));
    if (next != rx_tail) { /* full: drop the byte; the CRC will reject the frame */
        rx_buf[rx_head] = b;
        rx_head = next;
    }
}

ISR(USART_UDRE_vect)
{
    if (tx_head == tx_tail) {
        UCSR0B &= (uint8_t)~_BV(UDRIE0);
        return;
    }
    UDR0 = tx_buf[tx_tail];
    tx_tail = (uint8_t)((tx_tail + 1) & (TX_SIZE - 1));
}

static uint32_t now_ms(void)
{
    uint8_t s = SREG;
    cli();
    uint32_t t = ms_clock;
    SREG = s;
    return t;
}

static void set_pulses(uint16_t steer_us, uint16_t throttle_us)
{
    /* 16-bit timer registers share one TEMP byte: the PCINT ISR's TCNT1 read between
     * the two halves of an OCR1x write would tear it, so interrupts wait */
    uint8_t s = SREG;
    cli();
    OCR1A = (uint16_t)(steer_us * 2u); /* 0.5 us per tick */
    OCR1B = (uint16_t)(throttle_us * 2u);
    SREG = s;
}

static void take_rc_pulses(uint32_t now)
{
    uint16_t w[EP_RC_CHANNELS];
    uint8_t s = SREG;
    cli();
    uint8_t fresh = rc_fresh;
    rc_fresh = 0;
    for (uint8_t ch = 0; ch < EP_RC_CHANNELS; ch++)
        w[ch] = rc_width[ch];
    SREG = s;
    for (uint8_t ch = 0; ch < EP_RC_CHANNELS; ch++)
        if (fresh & _BV(ch))
            ep_device_rc_pulse(&dev, ch, (uint16_t)((w[ch] + 1u) / 2u), now);
}

/* One differing byte per pass, and only when the EEPROM is idle: a write takes
 * 3.3 ms, and waiting for it would let the UART's receive ring overflow. */
static void persist_rc(void)
{
    uint8_t want[EP_RC_PERSIST_LEN];
    ep_device_rc_persist(&dev, want);
    for (uint8_t i = 0; i < EP_RC_PERSIST_LEN; i++) {
        if (want[i] == ee_shadow[i])
            continue;
        if (eeprom_is_ready()) {
            eeprom_write_byte(EE_RC + i, want[i]);
            ee_shadow[i] = want[i];
        }
        return;
    }
}

void ep_hw_init(void)
{
    MCUSR = 0;
    wdt_disable();
    cli();
    ep_device_init(&dev, 0);
    eeprom_read_block(ee_shadow, EE_RC, EP_RC_PERSIST_LEN);
    ep_device_rc_restore(&dev, ee_shadow); /* a blank EEPROM: kill switch off */

    /* Timer1: fast PWM mode 14 (TOP = ICR1), non-inverting on OC1A and OC1B, clk/8
     * (TOP and widths first, the clock last: the timer starts fully set up) */
    DDRB |= _BV(DDB1) | _BV(DDB2);
    ICR1 = PWM_TOP;
    set_pulses(dev.steer_us, dev.throttle_us);
    TCCR1A = _BV(COM1A1) | _BV(COM1B1) | _BV(WGM11);
    TCCR1B = _BV(WGM13) | _BV(WGM12) | _BV(CS11);

    /* Timer2: CTC, clk/64, 250 counts = 1 ms */
    OCR2A = 249;
    TIMSK2 = _BV(OCIE2A);
    TCCR2A = _BV(WGM21);
    TCCR2B = _BV(CS22);

    /* USART0: double speed (set before the divisor), 8N1 */
    UCSR0A = _BV(U2X0);
    uint16_t ubrr = (uint16_t)((F_CPU + 4UL * EP_BAUD) / (8UL * EP_BAUD) - 1UL);
    UBRR0H = (uint8_t)(ubrr >> 8);
    UBRR0L = (uint8_t)ubrr;
    UCSR0C = _BV(UCSZ01) | _BV(UCSZ00);
    UCSR0B = _BV(RXEN0) | _BV(TXEN0) | _BV(RXCIE0);

    /* RC receiver inputs: pull-ups on, one pin-change interrupt for the three */
    DDRC &= (uint8_t)~RC_PINS;
    PORTC |= RC_PINS;
    rc_pins = PINC;
    PCMSK1 = RC_PINS;
    PCIFR = _BV(PCIF1);
    PCICR |= _BV(PCIE1);

    wdt_enable(WDTO_120MS);
    set_sleep_mode(SLEEP_MODE_IDLE);
    sei();
}

static void pump_tx(void)
{
    uint8_t moved = 0;
    while (dev.tx_len) {
        uint8_t next = (uint8_t)((tx_head + 1) & (TX_SIZE - 1));
        if (next == tx_tail)
            break; /* ring full: the rest stays queued in dev.tx */
        uint8_t b;
        ep_device_take_tx(&dev, &b, 1);
        tx_buf[tx_head] = b;
        tx_head = next;
        moved = 1;
    }
    if (moved)
        UCSR0B |= _BV(UDRIE0);
}

void ep_hw_poll(void)
{
    wdt_reset();
    while (rx_tail != rx_head) {
        uint8_t b = rx_buf[rx_tail];
        rx_tail = (uint8_t)((rx_tail + 1) & (RX_SIZE - 1));
        ep_device_feed(&dev, b, now_ms());
    }
    take_rc_pulses(now_ms());
    ep_device_tick(&dev, now_ms());
    set_pulses(dev.steer_us, dev.throttle_us);
    pump_tx();
    persist_rc();

    /* sleep until the next interrupt (1 kHz tick at the latest), without
     * missing a byte that arrived since the check above */
    cli();
    if (rx_tail == rx_head) {
        sleep_enable();
        sei();
        sleep_cpu();
        sleep_disable();
    }
    sei();
}
#endif /* __AVR__ */
