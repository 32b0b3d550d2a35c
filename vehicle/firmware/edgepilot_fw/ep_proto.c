/* ep_proto.c - CRC, framing and the resynchronising parser (see ep_proto.h). */
#include "ep_proto.h"

uint16_t ep_crc16_update(uint16_t crc, uint8_t byte)
{
    /* bitwise on purpose: 8 shifts per byte is ~1 us on a 16 MHz AVR and
     * saves the 512-byte table the 2 KB of RAM / flash budget would notice */
    crc ^= (uint16_t)byte << 8;
    for (uint8_t i = 0; i < 8; i++)
        crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    return crc;
}

uint16_t ep_crc16(const uint8_t *data, uint16_t len)
{
    uint16_t crc = 0xFFFF;
    for (uint16_t i = 0; i < len; i++)
        crc = ep_crc16_update(crc, data[i]);
    return crc;
}

uint8_t ep_encode(uint8_t type, uint8_t seq, const uint8_t *payload, uint8_t len, uint8_t *out)
{
    if (len > EP_MAX_PAYLOAD)
        return 0;
    out[0] = EP_SYNC0;
    out[1] = EP_SYNC1;
    out[2] = type;
    out[3] = seq;
    out[4] = len;
    for (uint8_t i = 0; i < len; i++)
        out[5 + i] = payload[i];
    uint16_t crc = ep_crc16(out + 2, (uint16_t)(3 + len));
    out[5 + len] = (uint8_t)crc;
    out[6 + len] = (uint8_t)(crc >> 8);
    return (uint8_t)(len + EP_OVERHEAD);
}

void ep_parser_init(ep_parser_t *p)
{
    p->n = 0;
    p->bad_crc = 0;
    p->bad_len = 0;
}

static void drop(ep_parser_t *p, uint8_t k)
{
    for (uint8_t i = k; i < p->n; i++)
        p->buf[i - k] = p->buf[i];
    p->n = (uint8_t)(p->n - k);
}

void ep_parser_push(ep_parser_t *p, uint8_t b)
{
    /* after ep_parser_next() returned 0 the buffer holds less than one frame, so
     * this never triggers; it only keeps a caller that skips next() memory-safe */
    if (p->n == EP_MAX_FRAME)
        drop(p, 1);
    p->buf[p->n++] = b;
}

uint8_t ep_parser_next(ep_parser_t *p)
{
    for (;;) {
        uint8_t i = 0; /* skip to "AA 55", or a lone "AA" as the last byte */
        while (i < p->n && !(p->buf[i] == EP_SYNC0 && (i + 1 == p->n || p->buf[i + 1] == EP_SYNC1)))
            i++;
        drop(p, i);
        if (p->n < 5)
            return 0;
        uint8_t len = p->buf[4];
        if (len > EP_MAX_PAYLOAD) {
            p->bad_len++;
            drop(p, 1);
            continue;
        }
        uint8_t total = (uint8_t)(len + EP_OVERHEAD);
        if (p->n < total)
            return 0;
        uint16_t rx = (uint16_t)(p->buf[5 + len] | ((uint16_t)p->buf[6 + len] << 8));
        if (ep_crc16(p->buf + 2, (uint16_t)(3 + len)) != rx) {
            p->bad_crc++;
            drop(p, 1);
            continue;
        }
        p->type = p->buf[2];
        p->seq = p->buf[3];
        p->len = len;
        for (uint8_t k = 0; k < len; k++)
            p->payload[k] = p->buf[5 + k];
        drop(p, total);
        return 1;
    }
}
