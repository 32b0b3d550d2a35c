/* ep_proto.c - CRC, framing and the byte-at-a-time parser (see ep_proto.h). */
#include "ep_proto.h"

enum { S_SYNC0 = 0, S_SYNC1, S_TYPE, S_SEQ, S_LEN, S_PAYLOAD, S_CRC0, S_CRC1 };

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
    p->state = S_SYNC0;
    p->bad_crc = 0;
    p->bad_len = 0;
}

uint8_t ep_parser_feed(ep_parser_t *p, uint8_t b)
{
    switch (p->state) {
    case S_SYNC0:
        if (b == EP_SYNC0)
            p->state = S_SYNC1;
        return 0;
    case S_SYNC1:
        /* 0xAA 0xAA 0x55: the second 0xAA may be the real start */
        p->state = (b == EP_SYNC1) ? S_TYPE : (b == EP_SYNC0 ? S_SYNC1 : S_SYNC0);
        return 0;
    case S_TYPE:
        p->type = b;
        p->crc = ep_crc16_update(0xFFFF, b);
        p->state = S_SEQ;
        return 0;
    case S_SEQ:
        p->seq = b;
        p->crc = ep_crc16_update(p->crc, b);
        p->state = S_LEN;
        return 0;
    case S_LEN:
        if (b > EP_MAX_PAYLOAD) {
            p->bad_len++;
            p->state = (b == EP_SYNC0) ? S_SYNC1 : S_SYNC0;
            return 0;
        }
        p->len = b;
        p->idx = 0;
        p->crc = ep_crc16_update(p->crc, b);
        p->state = b ? S_PAYLOAD : S_CRC0;
        return 0;
    case S_PAYLOAD:
        p->payload[p->idx++] = b;
        p->crc = ep_crc16_update(p->crc, b);
        if (p->idx == p->len)
            p->state = S_CRC0;
        return 0;
    case S_CRC0:
        p->rx_crc = b;
        p->state = S_CRC1;
        return 0;
    case S_CRC1:
        p->rx_crc |= (uint16_t)b << 8;
        p->state = S_SYNC0;
        if (p->rx_crc == p->crc)
            return 1;
        p->bad_crc++;
        return 0;
    default:
        p->state = S_SYNC0;
        return 0;
    }
}
