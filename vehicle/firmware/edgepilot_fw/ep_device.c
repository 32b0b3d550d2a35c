/* ep_device.c - command handling, failsafe and replies (see ep_device.h). */
#include "ep_device.h"

static void queue_frame(ep_device_t *d, uint8_t type, const uint8_t *payload, uint8_t len)
{
    if (d->tx_len + len + EP_OVERHEAD > EP_TX_BUF) {
        d->tx_dropped++; /* the host is not reading; never block the control path */
        return;
    }
    d->tx_len += ep_encode(type, d->tx_seq++, payload, len, d->tx + d->tx_len);
}

static void send_ack(ep_device_t *d, uint8_t seq, uint8_t status)
{
    uint8_t p[EP_ACK_LEN];
    p[0] = seq;
    p[1] = status;
    ep_put_u16(p + 2, d->steer_us);
    ep_put_u16(p + 4, d->throttle_us);
    queue_frame(d, EP_T_ACK, p, EP_ACK_LEN);
}

static void send_telemetry(ep_device_t *d)
{
    uint8_t p[EP_TELEMETRY_LEN];
    uint32_t up = d->now_ms - d->boot_ms;
    uint16_t bad = (uint16_t)(d->parser.bad_crc + d->parser.bad_len);
    ep_put_u16(p + 0, d->steer_us);
    ep_put_u16(p + 2, d->throttle_us);
    p[4] = (uint8_t)(d->flags | (d->failsafe ? EP_F_FAILSAFE : 0) | (d->rearm ? EP_F_KILLED : 0));
    ep_put_u16(p + 5, d->rx_ok);
    ep_put_u16(p + 7, bad);
    ep_put_u16(p + 9, d->rx_lost);
    ep_put_u16(p + 11, d->failsafe_count);
    ep_put_u16(p + 13, (uint16_t)up);
    ep_put_u16(p + 15, (uint16_t)(up >> 16));
    queue_frame(d, EP_T_TELEMETRY, p, EP_TELEMETRY_LEN);
    d->flags &= (uint8_t)~EP_F_BOOT;
}

static void go_neutral(ep_device_t *d)
{
    d->steer_us = d->neutral_steer_us;
    d->throttle_us = d->neutral_throttle_us;
}

/* ---- RC receiver and kill switch ---------------------------------------------- */

static uint8_t rc_alive(const ep_device_t *d, uint8_t ch)
{
    return (d->rc_seen & (1u << ch)) && (uint32_t)(d->now_ms - d->rc_ms[ch]) < EP_RC_LOST_MS;
}

static uint8_t in_kill_position(const ep_device_t *d, uint16_t us)
{
    return (d->rc_flags & EP_RC_KILL_LOW) ? us < d->kill_threshold_us : us > d->kill_threshold_us;
}

static uint8_t rc_state(const ep_device_t *d)
{
    uint8_t f = 0;
    if (d->rc_flags & EP_RC_KILL)
        f |= EP_RCF_KILL_ON;
    if (d->killed)
        f |= EP_RCF_KILLED;
    else if (d->rearm)
        f |= EP_RCF_REARM;
    return f;
}

static void send_rc(ep_device_t *d)
{
    uint8_t p[EP_RC_LEN];
    p[0] = EP_PROTO_VERSION;
    p[1] = rc_state(d);
    for (uint8_t ch = 0; ch < EP_RC_CHANNELS; ch++)
        ep_put_u16(p + 2 + 2 * ch, rc_alive(d, ch) ? d->rc_us[ch] : 0);
    queue_frame(d, EP_T_RC, p, EP_RC_LEN);
    d->rc_report_ms = d->now_ms;
}

/* Apply the kill-switch rule (see ep_device.h) to the current readings; returns 1
 * when the state changed and an RC frame went out about it. */
static uint8_t update_kill(ep_device_t *d)
{
    uint8_t before = rc_state(d);
    if (!(d->rc_flags & EP_RC_KILL)) {
        d->killed = 0; /* switched off by the host: still wait for a neutral command */
    } else if (!rc_alive(d, 2) || in_kill_position(d, d->rc_us[2])) {
        d->killed = 1;
        d->rearm = 1;
        d->run_pulses = 0;
    } else if (d->killed && d->run_pulses >= EP_RC_RELEASE_PULSES) {
        d->killed = 0;
    }
    if (d->rearm)
        go_neutral(d);
    if (rc_state(d) == before || !(d->rc_flags & EP_RC_REPORT))
        return 0;
    send_rc(d); /* tell the host at once, not at the next report */
    return 1;
}

void ep_device_rc_pulse(ep_device_t *d, uint8_t ch, uint16_t width_us, uint32_t now_ms)
{
    d->now_ms = now_ms;
    if (ch >= EP_RC_CHANNELS || width_us < EP_RC_MIN_US || width_us > EP_RC_MAX_US)
        return;
    d->rc_us[ch] = width_us;
    d->rc_ms[ch] = now_ms;
    d->rc_seen |= (uint8_t)(1u << ch);
    if (ch == 2) {
        if (in_kill_position(d, width_us))
            d->run_pulses = 0;
        else if (d->run_pulses < 255)
            d->run_pulses++;
    }
    update_kill(d);
}

static uint8_t persist_check(const uint8_t *b)
{
    return (uint8_t)~(b[0] ^ b[1] ^ b[2] ^ b[3]);
}

void ep_device_rc_persist(const ep_device_t *d, uint8_t *out)
{
    out[0] = EP_RC_MAGIC;
    out[1] = (uint8_t)(d->rc_flags & (EP_RC_KILL | EP_RC_KILL_LOW));
    ep_put_u16(out + 2, d->kill_threshold_us);
    out[4] = persist_check(out);
}

static uint8_t rc_config_valid(uint8_t flags, uint16_t threshold_us)
{
    return !(flags & (uint8_t)~EP_RC_FLAGS) && threshold_us >= EP_RC_MIN_US && threshold_us <= EP_RC_MAX_US;
}

uint8_t ep_device_rc_restore(ep_device_t *d, const uint8_t *in)
{
    uint16_t thr = ep_get_u16(in + 2);
    if (in[0] != EP_RC_MAGIC || in[4] != persist_check(in) || (in[1] & EP_RC_REPORT) ||
        !rc_config_valid(in[1], thr))
        return 0;
    d->rc_flags = in[1];
    d->kill_threshold_us = thr;
    update_kill(d);
    return 1;
}

void ep_device_init(ep_device_t *d, uint32_t now_ms)
{
    uint8_t *raw = (uint8_t *)d;
    for (uint16_t i = 0; i < sizeof(*d); i++)
        raw[i] = 0;
    ep_parser_init(&d->parser);
    d->neutral_steer_us = EP_DEFAULT_NEUTRAL_US;
    d->neutral_throttle_us = EP_DEFAULT_NEUTRAL_US;
    d->min_us = EP_DEFAULT_MIN_US;
    d->max_us = EP_DEFAULT_MAX_US;
    d->now_ms = d->boot_ms = d->last_cmd_ms = now_ms;
    d->failsafe = 1; /* ESCs arm on a neutral signal: start there until told otherwise */
    d->flags = EP_F_BOOT;
    d->kill_threshold_us = EP_DEFAULT_NEUTRAL_US;
    go_neutral(d);
    send_telemetry(d); /* tells a listening host "I just reset" */
}

static uint16_t clamp(ep_device_t *d, uint16_t us, uint8_t *clamped)
{
    if (us < d->min_us) {
        *clamped = 1;
        return d->min_us;
    }
    if (us > d->max_us) {
        *clamped = 1;
        return d->max_us;
    }
    return us;
}

static void handle_frame(ep_device_t *d)
{
    ep_parser_t *p = &d->parser;
    uint8_t dup = 0;
    d->rx_ok++;
    if (p->type == EP_T_CONFIG) {
        d->have_seq = 0; /* a (re)connecting host starts its own sequence */
    } else if (d->have_seq) {
        if (p->seq == d->last_seq)
            dup = 1;
        else
            d->rx_lost += (uint8_t)(p->seq - d->last_seq - 1);
    }
    d->have_seq = 1;
    d->last_seq = p->seq;

    switch (p->type) {
    case EP_T_CMD: {
        if (p->len != 4) {
            send_ack(d, p->seq, EP_ACK_BAD_LEN);
            return;
        }
        if (dup) {
            send_ack(d, p->seq, EP_ACK_DUP);
            return;
        }
        uint8_t clamped = 0;
        uint16_t steer = clamp(d, ep_get_u16(p->payload), &clamped);
        uint16_t throttle = clamp(d, ep_get_u16(p->payload + 2), &clamped);
        d->failsafe = 0; /* the host is alive, even while the kill switch holds the car */
        d->last_cmd_ms = d->now_ms;
        if (d->rearm && !d->killed && throttle + EP_REARM_TOL_US >= d->neutral_throttle_us &&
            throttle <= d->neutral_throttle_us + EP_REARM_TOL_US) {
            d->rearm = 0;
            if (d->rc_flags & EP_RC_REPORT)
                send_rc(d);
        }
        if (d->rearm) {
            go_neutral(d);
            send_ack(d, p->seq, EP_ACK_KILLED);
            return;
        }
        d->steer_us = steer;
        d->throttle_us = throttle;
        send_ack(d, p->seq, clamped ? EP_ACK_CLAMPED : EP_ACK_OK);
        return;
    }
    case EP_T_HEARTBEAT:
        if (p->len != 0)
            send_ack(d, p->seq, EP_ACK_BAD_LEN);
        else
            send_telemetry(d);
        return;
    case EP_T_CONFIG: {
        if (p->len != 8) {
            send_ack(d, p->seq, EP_ACK_BAD_LEN);
            return;
        }
        uint16_t ns = ep_get_u16(p->payload), nt = ep_get_u16(p->payload + 2);
        uint16_t lo = ep_get_u16(p->payload + 4), hi = ep_get_u16(p->payload + 6);
        if (lo < EP_LIMIT_MIN_US || hi > EP_LIMIT_MAX_US || lo >= hi || ns < lo || ns > hi || nt < lo ||
            nt > hi) {
            send_ack(d, p->seq, EP_ACK_BAD_VALUE);
            return;
        }
        d->neutral_steer_us = ns;
        d->neutral_throttle_us = nt;
        d->min_us = lo;
        d->max_us = hi;
        d->flags |= EP_F_CONFIGURED;
        if (d->failsafe || d->rearm)
            go_neutral(d);
        send_ack(d, p->seq, EP_ACK_OK);
        return;
    }
    case EP_T_RC_CONFIG: {
        if (p->len != EP_RC_CONFIG_LEN) {
            send_ack(d, p->seq, EP_ACK_BAD_LEN);
            return;
        }
        uint16_t thr = ep_get_u16(p->payload + 1);
        if (!rc_config_valid(p->payload[0], thr)) {
            send_ack(d, p->seq, EP_ACK_BAD_VALUE);
            return;
        }
        d->rc_flags = p->payload[0];
        d->kill_threshold_us = thr;
        send_ack(d, p->seq, EP_ACK_OK);
        if (!update_kill(d) && (d->rc_flags & EP_RC_REPORT))
            send_rc(d); /* the first report answers the request */
        return;
    }
    default:
        send_ack(d, p->seq, EP_ACK_UNKNOWN);
        return;
    }
}

void ep_device_tick(ep_device_t *d, uint32_t now_ms)
{
    d->now_ms = now_ms;
    if (!d->failsafe && (uint32_t)(now_ms - d->last_cmd_ms) >= EP_FAILSAFE_MS) {
        d->failsafe = 1;
        d->failsafe_count++;
        go_neutral(d);
        send_telemetry(d); /* tell the host at once, not at its next heartbeat */
    }
    update_kill(d); /* a kill-switch channel that fell silent kills here */
    if ((d->rc_flags & EP_RC_REPORT) && (uint32_t)(now_ms - d->rc_report_ms) >= EP_RC_REPORT_MS)
        send_rc(d);
}

void ep_device_feed(ep_device_t *d, uint8_t byte, uint32_t now_ms)
{
    ep_device_tick(d, now_ms); /* a command that arrives late must not skip the failsafe */
    ep_parser_push(&d->parser, byte);
    while (ep_parser_next(&d->parser))
        handle_frame(d);
}

uint16_t ep_device_take_tx(ep_device_t *d, uint8_t *out, uint16_t max)
{
    uint16_t n = d->tx_len < max ? d->tx_len : max;
    for (uint16_t i = 0; i < n; i++)
        out[i] = d->tx[i];
    for (uint16_t i = n; i < d->tx_len; i++)
        d->tx[i - n] = d->tx[i];
    d->tx_len -= n;
    return n;
}

uint16_t ep_device_sizeof(void) { return sizeof(ep_device_t); }
uint16_t ep_device_steer_us(const ep_device_t *d) { return d->steer_us; }
uint16_t ep_device_throttle_us(const ep_device_t *d) { return d->throttle_us; }
uint8_t ep_device_failsafe(const ep_device_t *d) { return d->failsafe; }
uint16_t ep_device_failsafe_count(const ep_device_t *d) { return d->failsafe_count; }
