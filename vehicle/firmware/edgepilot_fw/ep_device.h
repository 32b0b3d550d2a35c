/*
 * ep_device.h - the motor controller's brain without its hardware: frames in,
 * pulse widths and reply frames out, plus the 250 ms failsafe and the RC
 * receiver's kill switch. Plain C with no I/O so the very same code runs in the
 * ATmega328P image (ep_hw_avr.c feeds it UART bytes, receiver pulse widths and a
 * millisecond clock) and on the host (tests via ctypes).
 *
 * Failsafe rule: the outputs go to neutral when no *valid command* (a CMD frame
 * with a good CRC, the right length and a fresh sequence number) arrived for
 * EP_FAILSAFE_MS. Heartbeats keep the back channel alive but deliberately do
 * not feed the failsafe: a host whose control loop hung but whose serial thread
 * still runs must not keep the car driving on a stale command.
 *
 * Kill switch rule (when RC_CONFIG enabled it): the outputs are held at neutral,
 * whatever the host commands, while the receiver's channel 2 is in the kill
 * position *or has no signal* (no valid pulse for EP_RC_LOST_MS, or none since
 * reset): a transmitter that is off, out of range or unplugged can no longer stop
 * the car, so the car stops. The kill ends after EP_RC_RELEASE_PULSES consecutive
 * pulses in the run position, and the outputs follow the host again only from its
 * first command with the throttle at neutral (within EP_REARM_TOL_US): a host that
 * kept commanding full throttle through the kill does not launch the car.
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
#define EP_ACK_BAD_VALUE 5   /* CONFIG / RC_CONFIG values out of range: ignored */
#define EP_ACK_KILLED 6      /* v2: CMD taken (it feeds the failsafe) but the outputs are held at
                              * neutral by the kill switch; the ACK carries the neutral outputs */
#define EP_F_KILLED 0x08     /* v2 telemetry flag: the kill switch holds the outputs at neutral */

/* RC receiver (protocol version 2). Channels: 0 steering, 1 throttle, 2 aux / kill switch. */
#define EP_RC_CHANNELS 3
#define EP_RC_MIN_US 800          /* a pulse outside 800..2200 us is a glitch, not a reading */
#define EP_RC_MAX_US 2200
#define EP_RC_LOST_MS 100         /* no valid pulse for this long: that channel has no signal */
#define EP_RC_RELEASE_PULSES 3    /* consecutive run-position pulses that end a kill */
#define EP_RC_REPORT_MS 20        /* RC frame period while the host asked for reports */
#define EP_REARM_TOL_US 30        /* "throttle at neutral" for re-arming after a kill */
/* RC_CONFIG payload (EP_RC_CONFIG_LEN bytes): flags u8, kill_threshold_us u16 */
#define EP_RC_CONFIG_LEN 3
#define EP_RC_KILL 0x01           /* channel 2 is a kill switch */
#define EP_RC_KILL_LOW 0x02       /* its kill position is below the threshold (else above) */
#define EP_RC_REPORT 0x04         /* send an RC frame every EP_RC_REPORT_MS */
#define EP_RC_FLAGS (EP_RC_KILL | EP_RC_KILL_LOW | EP_RC_REPORT)
/* RC payload (EP_RC_LEN bytes): version u8 (EP_PROTO_VERSION), flags u8,
 *   steering_us u16, throttle_us u16, aux_us u16; a width of 0 = no signal on that channel */
#define EP_RC_LEN 8
#define EP_RCF_KILL_ON 0x01       /* the kill switch is enabled */
#define EP_RCF_KILLED 0x02        /* kill position or no signal: outputs held at neutral */
#define EP_RCF_REARM 0x04         /* kill over: outputs held until a neutral-throttle CMD */
/* The kill-switch settings as the hardware layer persists them (the AVR's EEPROM), so a
 * reset (brown-out, watchdog) never comes back with the kill switch off: magic, flags,
 * threshold u16, check byte. */
#define EP_RC_PERSIST_LEN 5
#define EP_RC_MAGIC 0xEC

typedef struct {
    ep_parser_t parser;
    uint16_t steer_us, throttle_us; /* what the PWM outputs carry now */
    uint16_t neutral_steer_us, neutral_throttle_us, min_us, max_us;
    uint32_t last_cmd_ms, now_ms, boot_ms;
    uint8_t failsafe, flags;
    uint8_t have_seq, last_seq, tx_seq;
    uint16_t rx_ok, rx_lost, failsafe_count, tx_dropped;
    /* RC receiver: last valid pulse per channel and when it came */
    uint16_t rc_us[EP_RC_CHANNELS];
    uint32_t rc_ms[EP_RC_CHANNELS], rc_report_ms;
    uint16_t kill_threshold_us;
    uint8_t rc_seen; /* bit per channel: a valid pulse came since reset */
    uint8_t rc_flags, killed, rearm, run_pulses;
    uint8_t tx[EP_TX_BUF];
    uint16_t tx_len;
} ep_device_t;

void ep_device_init(ep_device_t *d, uint32_t now_ms);
/* One received byte at time now_ms (the firmware's millisecond clock). */
void ep_device_feed(ep_device_t *d, uint8_t byte, uint32_t now_ms);
/* Call often (every loop pass): applies the failsafe. */
void ep_device_tick(ep_device_t *d, uint32_t now_ms);
/* One complete receiver pulse (rising to falling edge) on channel ch at now_ms. */
void ep_device_rc_pulse(ep_device_t *d, uint8_t ch, uint16_t width_us, uint32_t now_ms);
/* The kill-switch settings to persist (EP_RC_PERSIST_LEN bytes), and restoring them
 * after ep_device_init; restore returns 0 (and changes nothing) for a block that is
 * not valid, e.g. a blank EEPROM. */
void ep_device_rc_persist(const ep_device_t *d, uint8_t *out);
uint8_t ep_device_rc_restore(ep_device_t *d, const uint8_t *in);
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
