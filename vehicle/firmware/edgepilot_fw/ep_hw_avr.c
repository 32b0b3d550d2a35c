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
 *   the watchdog (120 ms): if this loop ever hangs, the chip resets and comes
 *     back up at neutral.
 */
#if defined(__AVR__)
#include "ep_hw_avr.h"

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

static volatile uint8_t rx_buf[RX_SIZE], rx_head, rx_tail;
static volatile uint8_t tx_buf[TX_SIZE], tx_head, tx_tail;
static volatile uint32_t ms_clock;
static ep_device_t dev;

ISR(TIMER2_COMPA_vect) { ms_clock++; }

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
    OCR1A = (uint16_t)(steer_us * 2u); /* 0.5 us per tick */
    OCR1B = (uint16_t)(throttle_us * 2u);
}

void ep_hw_init(void)
{
    MCUSR = 0;
    wdt_disable();
    cli();
    ep_device_init(&dev, 0);

    /* Timer1: fast PWM mode 14 (TOP = ICR1), non-inverting on OC1A and OC1B, clk/8
     * (TOP and widths first, the clock last: the timer starts fully set up) */
    DDRB |= _BV(DDB1) | _BV(DDB2);
    ICR1 = 39999;
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
    ep_device_tick(&dev, now_ms());
    set_pulses(dev.steer_us, dev.throttle_us);
    pump_tx();

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
