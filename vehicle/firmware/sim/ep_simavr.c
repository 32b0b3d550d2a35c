/*
 * ep_simavr.c - run the built firmware image in simavr, in real time, with
 * its USART0 on a pseudo-terminal, its two PWM pins measured and, on request,
 * an RC receiver's pulse trains on its receiver pins.
 *
 *   ep_simavr FIRMWARE.elf [--rc] [--eeprom FILE]
 *
 * --rc      read commands from stdin, one a line:
 *             rc <ch> <width_us>   from the next frame on, receiver channel ch (0 steering
 *                                  on PC0/A0, 1 throttle on PC1/A1, 2 aux on PC2/A2) sends
 *                                  a pulse of width_us every 20 ms; 0 = no pulses (signal
 *                                  lost). The channels start 2.5 ms apart, as a receiver
 *                                  sends them one after the other.
 * --eeprom  load the EEPROM from FILE at start (when it exists) and save it there at
 *           exit: a second run with the same file is the same board powered up again.
 *
 * stdout (line-buffered, one event per line):
 *   pty /dev/pts/N                  the serial port to open (printed first)
 *   rc <ch> <t_ms> <width_us>       (--rc) receiver channel ch's pulse train changed
 *                                   width at a frame starting at t_ms (0: stopped)
 *   pwm <ch> <t_ms> <width_us>      a servo/ESC pulse width changed; ch is
 *                                   steer (PB1/OC1A/D9) or throttle (PB2/OC1B/D10),
 *                                   t_ms the simulated time of that pulse
 *   exit <state>                    the simulated CPU stopped (crash, sleep forever)
 *
 * Widths come from the pin edges the simulated Timer1 drives, not from the
 * OCR registers: what is checked is what a servo on that pin would see.
 * Simulated time is paced to the wall clock (the firmware's 250 ms failsafe
 * must mean 250 ms to a host on the pty); when the host CPU is slower than
 * the simulation, it simply runs late. SIGTERM/SIGINT stop it cleanly.
 */
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "avr_eeprom.h"
#include "avr_ioport.h"
#include "avr_timer.h"
#include "sim_avr.h"
#include "sim_elf.h"
#include "sim_time.h"
#include "uart_pty.h"

static volatile sig_atomic_t stop;
static avr_t *avr;

typedef struct {
    const char *name;
    avr_cycle_count_t rise;
    int have_rise;
    long last_width_us;
} channel_t;

static channel_t channels[2] = {{"steer", 0, 0, -1}, {"throttle", 0, 0, -1}};

static void on_stop(int sig)
{
    (void)sig;
    stop = 1;
}

static void pin_changed(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq;
    channel_t *c = param;
    if (value & 1) {
        c->rise = avr->cycle;
        c->have_rise = 1;
        return;
    }
    if (!c->have_rise)
        return;
    long width = (long)((avr->cycle - c->rise) * 1000000ULL / avr->frequency);
    long d = width - c->last_width_us;
    if (c->last_width_us < 0 || d > 1 || d < -1) { /* ignore the +-1 us edge jitter */
        c->last_width_us = width;
        printf("pwm %s %llu %ld\n", c->name, (unsigned long long)(avr->cycle * 1000ULL / avr->frequency),
               width);
    }
}

/*
 * simavr 1.6 (Debian 12's) does not re-arm Timer1's compare match when firmware
 * writes a new OCR1x in fast PWM mode: the pin would keep the old width forever
 * (fixed upstream later; real silicon double-buffers OCR1x and applies it at the
 * next period). The timer raises its PWM IRQ on every such write; answering it
 * with a timer ioctl makes simavr recompute the compare timing, phase preserved.
 */
static void ocr_written(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq;
    (void)value;
    (void)param;
    uint32_t trace = 0;
    avr_ioctl(avr, AVR_IOCTL_TIMER_SET_TRACE('1'), &trace);
}

/* simavr calls this when the firmware sleeps; the pacing below does the waiting */
static void no_sleep(avr_t *a, avr_cycle_count_t how_long)
{
    (void)a;
    (void)how_long;
}

/* ---- the RC receiver: one pulse train per channel, driven by cycle timers ---- */

#define RC_CHANNELS 3
#define RC_PERIOD_US 20000u

typedef struct {
    avr_irq_t *pin;
    volatile uint32_t width_us; /* set by the stdin reader, taken at each frame start */
    uint32_t cur_us;
    int high;
} rc_in_t;

static rc_in_t rc_in[RC_CHANNELS];

static avr_cycle_count_t rc_edge(avr_t *a, avr_cycle_count_t when, void *param)
{
    rc_in_t *r = param;
    if (r->high) {
        avr_raise_irq(r->pin, 0);
        r->high = 0;
        return when + avr_usec_to_cycles(a, RC_PERIOD_US - r->cur_us);
    }
    if (r->width_us != r->cur_us)
        printf("rc %d %llu %u\n", (int)(r - rc_in), (unsigned long long)(when * 1000ULL / a->frequency),
               (unsigned)r->width_us);
    r->cur_us = r->width_us;
    if (r->cur_us == 0 || r->cur_us >= RC_PERIOD_US)
        return when + avr_usec_to_cycles(a, RC_PERIOD_US);
    avr_raise_irq(r->pin, 1);
    r->high = 1;
    return when + avr_usec_to_cycles(a, r->cur_us);
}

static void rc_start(void)
{
    for (int ch = 0; ch < RC_CHANNELS; ch++) {
        rc_in[ch].pin = avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ('C'), ch);
        avr_raise_irq(rc_in[ch].pin, 0);
        avr_cycle_timer_register_usec(avr, 1000 + 2500 * ch, rc_edge, &rc_in[ch]);
    }
}

/* Non-blocking: whatever complete lines stdin holds now. */
static void rc_commands(void)
{
    static char buf[256];
    static size_t n;
    static int closed;
    struct pollfd pfd = {0, POLLIN, 0};
    if (closed || poll(&pfd, 1, 0) <= 0 || !(pfd.revents & (POLLIN | POLLHUP)))
        return;
    ssize_t got = read(0, buf + n, sizeof(buf) - 1 - n);
    if (got <= 0) {
        closed = 1; /* the pulse trains keep their last widths */
        return;
    }
    n += (size_t)got;
    buf[n] = 0;
    char *line = buf, *nl;
    while ((nl = strchr(line, '\n')) != NULL) {
        *nl = 0;
        int ch;
        unsigned width;
        if (sscanf(line, "rc %d %u", &ch, &width) == 2 && ch >= 0 && ch < RC_CHANNELS)
            rc_in[ch].width_us = width;
        else
            fprintf(stderr, "ep_simavr: bad command: %s\n", line);
        line = nl + 1;
    }
    n = strlen(line);
    memmove(buf, line, n + 1);
}

static void eeprom_io(const char *path, int save)
{
    static uint8_t data[1024]; /* the ATmega328P's EEPROM */
    avr_eeprom_desc_t ee = {data, 0, sizeof(data)};
    FILE *f = fopen(path, save ? "wb" : "rb");
    if (!f)
        return; /* nothing saved yet: a blank EEPROM */
    if (save) {
        avr_ioctl(avr, AVR_IOCTL_EEPROM_GET, &ee);
        fwrite(ee.ee, 1, ee.size, f);
    } else if (fread(data, 1, sizeof(data), f) == sizeof(data)) {
        avr_ioctl(avr, AVR_IOCTL_EEPROM_SET, &ee);
    }
    fclose(f);
}

static double wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    int rc = 0;
    const char *eeprom = NULL;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--rc"))
            rc = 1;
        else if (!strcmp(argv[i], "--eeprom") && i + 1 < argc)
            eeprom = argv[++i];
        else
            argc = 0;
    }
    if (argc < 2) {
        fprintf(stderr, "usage: %s FIRMWARE.elf [--rc] [--eeprom FILE]\n", argv[0]);
        return 2;
    }
    elf_firmware_t fw;
    memset(&fw, 0, sizeof(fw));
    if (elf_read_firmware(argv[1], &fw) != 0) {
        fprintf(stderr, "ep_simavr: cannot read %s\n", argv[1]);
        return 1;
    }
    avr = avr_make_mcu_by_name("atmega328p");
    if (!avr) {
        fprintf(stderr, "ep_simavr: simavr has no atmega328p core\n");
        return 1;
    }
    avr_init(avr);
    avr_load_firmware(avr, &fw);
    avr->frequency = 16000000;
    avr->sleep = no_sleep;
    if (eeprom)
        eeprom_io(eeprom, 0);

    setvbuf(stdout, NULL, _IOLBF, 0);
    /* only flags: uart_pty's thread may be the one that receives the signal */
    signal(SIGTERM, on_stop);
    signal(SIGINT, on_stop);

    static uart_pty_t pty;
    uart_pty_init(avr, &pty);
    uart_pty_connect(&pty, '0');
    printf("pty %s\n", pty.port[0].slavename);

    for (int i = 0; i < 2; i++)
        avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ('B'), 1 + i), pin_changed,
                                &channels[i]);

    for (int i = 0; i < 2; i++)
        avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_TIMER_GETIRQ('1'), TIMER_IRQ_OUT_PWM0 + i),
                                ocr_written, NULL);

    if (rc)
        rc_start();

    double t0 = wall_s();
    int state = cpu_Running;
    avr_cycle_count_t next_poll = 0;
    while (!stop) {
        state = avr_run(avr);
        if (state == cpu_Done || state == cpu_Crashed)
            break;
        if (rc && avr->cycle >= next_poll) { /* stdin once per simulated millisecond */
            rc_commands();
            next_poll = avr->cycle + avr->frequency / 1000;
        }
        double ahead = (double)avr->cycle / avr->frequency - (wall_s() - t0);
        if (ahead > 0.002) {
            struct timespec ts = {0, (long)(ahead * 1e9)};
            nanosleep(&ts, NULL);
        }
    }
    if (state == cpu_Done || state == cpu_Crashed)
        printf("exit %d\n", state);
    if (eeprom)
        eeprom_io(eeprom, 1);
    /* no uart_pty_stop(): it joins a thread that may already have swallowed the
     * stop signal and would wait forever; exiting closes the pty all the same */
    fflush(stdout);
    _exit(state == cpu_Crashed ? 1 : 0);
}
