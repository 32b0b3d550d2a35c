/*
 * edgepilot motor controller - Arduino Uno / Nano (ATmega328P, 16 MHz).
 *
 * Speaks the edgepilot framed protocol on the USB serial port at 115200 baud
 * and drives the steering servo on D9 and the ESC on D10. No valid command
 * for 250 ms -> both outputs back to neutral. The logic lives in plain C next
 * to this file (ep_proto.c, ep_device.c, ep_hw_avr.c), shared with the
 * Makefile's avr-libc build and with the host tests; see docs/hardware.md.
 *
 * Do not use Serial, Servo or analogWrite on pins 3/9/10/11 in this sketch:
 * the firmware owns USART0, Timer1 and Timer2.
 */
#include "ep_hw_avr.h"

void setup() { ep_hw_init(); }

void loop() { ep_hw_poll(); }
