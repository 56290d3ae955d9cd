/* libFuzzer target for the device's decoder: arbitrary bytes from the host,
 * any split, with the clock moving, must never read or write out of bounds
 * (AddressSanitizer and UBSan watch), never emit more than a frame at a time,
 * and leave the device's counters and lengths within their bounds.
 * Build and run: make -C firmware-bridge fuzz (scripts/fuzz runs it). */
#include "sfb.h"

#include <stdlib.h>
#include <string.h>

static uint32_t clock_ms;
static size_t emitted;

static size_t sink(void *ctx, const uint8_t *b, size_t n) {
    (void)ctx;
    (void)b;
    if (n > SFB_WIRE_MAX) abort(); /* one frame at a time, never more */
    emitted += n;
    return n;
}
static uint32_t clock_now(void *ctx) { (void)ctx; return clock_ms; }
static int accept_write(void *ctx, uint8_t id, uint32_t raw) {
    sfb_set(ctx, id, raw);
    return raw % 7 == 3 ? SFB_REJECT_APPLICATION : 0;
}

static const sfb_register regs[] = {
    {"counter", SFB_U32, SFB_READ},
    {"setpoint", SFB_I16, SFB_READ_WRITE},
    {"temperature", SFB_F32, SFB_READ_WRITE},
};
static sfb_device dev;
static sfb_config cfg = {"fuzz", "F1", regs, 3, sink, clock_now, accept_write, &dev};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    clock_ms = 0xFFFFFF00u; /* the 32-bit clock wraps during the run */
    emitted = 0;
    if (sfb_init(&dev, &cfg) != SFB_OK) abort();
    /* The first byte picks the chunk size; each chunk advances the clock. */
    size_t chunk = size ? (size_t)(data[0] % 64) + 1 : 1;
    for (size_t i = size ? 1 : 0; i < size; i += chunk) {
        size_t n = size - i < chunk ? size - i : chunk;
        sfb_input(&dev, data + i, n);
        clock_ms += data[i];
        sfb_poll(&dev);
        if (dev.rx_len > sizeof dev.rx || dev.tx_len > sizeof dev.tx) abort();
        if (dev.rx_seq == 0 && dev.stats.rx_packets > 0 && sfb_online(&dev)) abort(); /* online only after a sequenced WELCOME */
    }
    /* The codec alone, on the same bytes. */
    uint8_t out[SFB_PACKET_MAX];
    size_t n = sfb_cobs_decode(data, size, out, sizeof out);
    if (n != (size_t)-1 && n > sizeof out) abort();
    return 0;
}
