/* ep_hw_avr.h - ATmega328P glue: USART0, Timer1 servo PWM, Timer2 millisecond clock. */
#ifndef EP_HW_AVR_H
#define EP_HW_AVR_H

#ifdef __cplusplus
extern "C" {
#endif

void ep_hw_init(void); /* outputs at neutral, UART at EP_BAUD, interrupts on */
void ep_hw_poll(void); /* one pass of the main loop; sleeps until the next interrupt */

#ifdef __cplusplus
}
#endif
#endif
