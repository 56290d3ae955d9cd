/* The baseline for the agent's Modbus polling: a bare libmodbus client
 * reading the same registers back to back.
 *
 *   modbus-client-loop PORT COUNT SECONDS
 *
 * Reads holding registers 0…COUNT-1 (COUNT ≤ 125: one transaction) for
 * SECONDS and prints "transactions N seconds S". */
#include <errno.h>
#include <modbus.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        printf("usage: modbus-client-loop PORT COUNT SECONDS\n");
        return 0;
    }
    if (argc < 4) {
        fprintf(stderr, "usage: modbus-client-loop PORT COUNT SECONDS\n");
        return 64;
    }
    int count = atoi(argv[2]);
    double seconds = atof(argv[3]);
    modbus_t *ctx = modbus_new_tcp("127.0.0.1", atoi(argv[1]));
    if (!ctx || modbus_connect(ctx) != 0) {
        fprintf(stderr, "modbus-client-loop: %s\n", modbus_strerror(errno));
        return 71;
    }
    uint16_t regs[125];
    long done = 0;
    double start = now(), end = start + seconds;
    while (now() < end) {
        if (modbus_read_registers(ctx, 0, count, regs) != count) {
            fprintf(stderr, "modbus-client-loop: %s\n", modbus_strerror(errno));
            return 1;
        }
        done++;
    }
    printf("transactions %ld seconds %.3f\n", done, now() - start);
    modbus_close(ctx);
    modbus_free(ctx);
    return 0;
}
