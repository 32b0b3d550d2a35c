/* main_avr.c - entry point of the plain avr-libc build (the Makefile's image).
 * The Arduino IDE / arduino-mk build uses edgepilot_fw.ino instead, whose
 * setup()/loop() call the same two functions; ARDUINO is defined there. */
#if defined(__AVR__) && !defined(ARDUINO)
#include "ep_hw_avr.h"

int main(void)
{
    ep_hw_init();
    for (;;)
        ep_hw_poll();
}
#endif
