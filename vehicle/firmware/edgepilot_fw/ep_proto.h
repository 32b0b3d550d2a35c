/*
 * ep_proto.h - the edgepilot framed serial protocol (plain C, shared by the
 * ATmega328P firmware and the host build the tests load with ctypes).
 *
 * Frame on the wire:
 *
 *   0xAA 0x55 | type u8 | seq u8 | len u8 | payload[len] | crc16 LE
 *
 * The CRC is CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection,
 * no final xor; check value 0x29B1 for "123456789"), computed over
 * type, seq, len and the payload. Two sync bytes plus a length cap plus the
 * CRC let the parser find the next frame after line noise or a torn frame.
 * All multi-byte fields are little-endian (the AVR's and the host's order).
 *
 * Why not COBS/SLIP: a fixed header keeps the AVR side to one 39-byte buffer
 * and a short loop, and the CRC already rejects false syncs.
 */
#ifndef EP_PROTO_H
#define EP_PROTO_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EP_SYNC0 0xAA
#define EP_SYNC1 0x55
#define EP_MAX_PAYLOAD 32
#define EP_OVERHEAD 7 /* sync0 sync1 type seq len crc_lo crc_hi */
#define EP_MAX_FRAME (EP_MAX_PAYLOAD + EP_OVERHEAD)

/* Protocol version 1: CMD, HEARTBEAT, CONFIG, ACK, TELEMETRY. Version 2 adds the RC
 * receiver (RC_CONFIG, RC, ACK status 6, telemetry flag 8) and changes nothing in the
 * version 1 frames: a version 1 firmware answers RC_CONFIG with ACK_UNKNOWN, and a
 * version 1 host never asks for RC frames, so it never gets one. */
#define EP_PROTO_VERSION 2

/* host -> car */
#define EP_T_CMD 0x01       /* steering_us u16, throttle_us u16 */
#define EP_T_HEARTBEAT 0x02 /* empty; answered with TELEMETRY; does NOT feed the failsafe */
#define EP_T_CONFIG 0x03    /* neutral_steer_us, neutral_throttle_us, min_us, max_us (u16 each) */
#define EP_T_RC_CONFIG 0x04 /* v2: flags u8, kill_threshold_us u16 (see ep_device.h) */
/* car -> host */
#define EP_T_ACK 0x81       /* acked_seq u8, status u8, steering_us u16, throttle_us u16 */
#define EP_T_TELEMETRY 0x82 /* see ep_device.h */
#define EP_T_RC 0x83        /* v2: the RC receiver's pulses and the kill switch (see ep_device.h) */

/* ACK status */
#define EP_ACK_OK 0
#define EP_ACK_CLAMPED 1  /* the command was outside [min_us, max_us] and was clamped */
#define EP_ACK_BAD_LEN 2  /* the payload length does not fit the type */
#define EP_ACK_DUP 3      /* same sequence number as the previous frame: ignored */
#define EP_ACK_UNKNOWN 4  /* unknown frame type */

uint16_t ep_crc16_update(uint16_t crc, uint8_t byte);
uint16_t ep_crc16(const uint8_t *data, uint16_t len);

/* Write one frame to out (room for EP_MAX_FRAME bytes); returns its length,
 * or 0 when len > EP_MAX_PAYLOAD. */
uint8_t ep_encode(uint8_t type, uint8_t seq, const uint8_t *payload, uint8_t len, uint8_t *out);

/* The parser keeps the bytes of the frame candidate it is looking at. When a
 * candidate fails (CRC, or a length over the cap) it drops only the first byte and
 * searches again from the next one, so a false sync in line noise never swallows
 * the real frame that follows it (a real frame is lost only if it is corrupted). */
typedef struct {
    uint8_t buf[EP_MAX_FRAME];
    uint8_t n; /* bytes held in buf */
    uint8_t type, seq, len;
    uint8_t payload[EP_MAX_PAYLOAD];
    uint16_t bad_crc; /* candidates dropped because the CRC did not match */
    uint16_t bad_len; /* candidates dropped because len > EP_MAX_PAYLOAD */
} ep_parser_t;

void ep_parser_init(ep_parser_t *p);
/* Add one received byte. Then call ep_parser_next() until it returns 0. */
void ep_parser_push(ep_parser_t *p, uint8_t byte);
/* 1 when a complete, CRC-valid frame is now in p->type, p->seq, p->len,
 * p->payload (valid until the next call); 0 when more bytes are needed. */
uint8_t ep_parser_next(ep_parser_t *p);

static inline uint16_t ep_get_u16(const uint8_t *b) { return (uint16_t)(b[0] | ((uint16_t)b[1] << 8)); }
static inline void ep_put_u16(uint8_t *b, uint16_t v) { b[0] = (uint8_t)v; b[1] = (uint8_t)(v >> 8); }

#ifdef __cplusplus
}
#endif
#endif
