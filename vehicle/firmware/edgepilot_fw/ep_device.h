/*
 * ep_device.h - the motor controller's brain without its hardware: frames in,
 * pulse widths and reply frames out, plus the 250 ms failsafe. Plain C with no
 * I/O so the very same code runs in the ATmega328P image (ep_hw_avr.c feeds it
 * UART bytes and a millisecond clock) and on the host (tests via ctypes).
 *
 * Failsafe rule: the outputs go to neutral when no *valid command* (a CMD frame
 * with a good CRC, the right length and a fresh sequence number) arrived for
 * EP_FAILSAFE_MS. Heartbeats keep the back channel alive but deliberately do
 * not feed the failsafe: a host whose control loop hung but whose serial thread
 * still runs must not keep the car driving on a stale command.
 */
#ifndef EP_DEVICE_H
#define EP_DEVICE_H

#include <stdint.h>

#include "ep_proto.h"

#ifdef __cplusplus
extern "C" {
#endif

#define EP_FAILSAFE_MS 250
#define EP_TX_BUF 96
#define EP_DEFAULT_NEUTRAL_US 1500
#define EP_DEFAULT_MIN_US 1000
#define EP_DEFAULT_MAX_US 2000
#define EP_LIMIT_MIN_US 500  /* CONFIG may not widen the range beyond these */
#define EP_LIMIT_MAX_US 2500

/* TELEMETRY payload (EP_TELEMETRY_LEN bytes, little-endian):
 *   steering_us u16, throttle_us u16, flags u8, rx_ok u16, rx_bad u16,
 *   rx_lost u16, failsafe_count u16, uptime_ms u32 */
#define EP_TELEMETRY_LEN 17
#define EP_F_FAILSAFE 0x01   /* outputs are at neutral: no valid command within EP_FAILSAFE_MS */
#define EP_F_BOOT 0x02       /* first telemetry after a reset */
#define EP_F_CONFIGURED 0x04 /* a CONFIG frame has been accepted since reset */
#define EP_ACK_LEN 6
#define EP_ACK_BAD_VALUE 5   /* CONFIG values out of range: ignored */

typedef struct {
    ep_parser_t parser;
    uint16_t steer_us, throttle_us; /* what the PWM outputs carry now */
    uint16_t neutral_steer_us, neutral_throttle_us, min_us, max_us;
    uint32_t last_cmd_ms, now_ms, boot_ms;
    uint8_t failsafe, flags;
    uint8_t have_seq, last_seq, tx_seq;
    uint16_t rx_ok, rx_lost, failsafe_count, tx_dropped;
    uint8_t tx[EP_TX_BUF];
    uint16_t tx_len;
} ep_device_t;

void ep_device_init(ep_device_t *d, uint32_t now_ms);
/* One received byte at time now_ms (the firmware's millisecond clock). */
void ep_device_feed(ep_device_t *d, uint8_t byte, uint32_t now_ms);
/* Call often (every loop pass): applies the failsafe. */
void ep_device_tick(ep_device_t *d, uint32_t now_ms);
/* Move up to max pending reply bytes to out; returns how many. */
uint16_t ep_device_take_tx(ep_device_t *d, uint8_t *out, uint16_t max);

/* accessors, so the host tests need not mirror the struct layout */
uint16_t ep_device_sizeof(void);
uint16_t ep_device_steer_us(const ep_device_t *d);
uint16_t ep_device_throttle_us(const ep_device_t *d);
uint8_t ep_device_failsafe(const ep_device_t *d);
uint16_t ep_device_failsafe_count(const ep_device_t *d);

#ifdef __cplusplus
}
#endif
#endif
