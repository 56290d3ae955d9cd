/* A libmodbus TCP server for the Modbus benchmark and the demo.
 *
 *   modbus-server PORT [--tick-ms N]
 *
 * 1000 holding and input registers, 2000 coils and discrete inputs, unit any.
 * Serves many clients (select). With --tick-ms N, every N ms: input register
 * 0 counts up, input register 1 is a temperature ×10, and holding registers
 * 100…199 get a new value each, with holding 98-99 the wall clock in ms
 * (low 32 bits, high word first) so a reader can measure change → upstream
 * latency. Prints "ready PORT", then "write holding A = V" for each register
 * a client writes. */
#include <errno.h>
#include <math.h>
#include <modbus.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int main(int argc, char **argv) {
    if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        printf("usage: modbus-server PORT [--tick-ms N]\n");
        return 0;
    }
    if (argc < 2) {
        fprintf(stderr, "usage: modbus-server PORT [--tick-ms N]\n");
        return 64;
    }
    int port = atoi(argv[1]);
    long tick = 0;
    if (argc > 3 && strcmp(argv[2], "--tick-ms") == 0) tick = atol(argv[3]);
    signal(SIGPIPE, SIG_IGN);
    modbus_t *ctx = modbus_new_tcp("127.0.0.1", port);
    modbus_mapping_t *map = modbus_mapping_new(2000, 2000, 1000, 1000);
    if (!ctx || !map) {
        fprintf(stderr, "modbus-server: %s\n", modbus_strerror(errno));
        return 71;
    }
    map->tab_registers[0] = 1234;
    map->tab_input_registers[0] = 7;
    int server = modbus_tcp_listen(ctx, 64);
    if (server < 0) {
        fprintf(stderr, "modbus-server: listen on %d: %s\n", port, modbus_strerror(errno));
        return 71;
    }
    printf("ready %d\n", port);
    fflush(stdout);
    fd_set all;
    FD_ZERO(&all);
    FD_SET(server, &all);
    int maxfd = server;
    uint8_t query[MODBUS_TCP_MAX_ADU_LENGTH];
    uint64_t next_tick = now_ms() + (uint64_t)tick;
    uint32_t ticks = 0;
    for (;;) {
        fd_set ready = all;
        struct timeval tv = {0, 10000};
        int n = select(maxfd + 1, &ready, NULL, NULL, tick ? &tv : NULL);
        if (n < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (tick && now_ms() >= next_tick) {
            next_tick += (uint64_t)tick;
            ticks++;
            map->tab_input_registers[0] = (uint16_t)ticks;
            map->tab_input_registers[1] = (uint16_t)(int16_t)(215 + 50 * sin(ticks / 10.0));
            for (int i = 100; i < 200; i++) map->tab_registers[i] = (uint16_t)(ticks + (uint32_t)i);
            uint32_t t = (uint32_t)now_ms();
            map->tab_registers[98] = (uint16_t)(t >> 16);
            map->tab_registers[99] = (uint16_t)t;
        }
        for (int fd = 0; fd <= maxfd && n > 0; fd++) {
            if (!FD_ISSET(fd, &ready)) continue;
            n--;
            if (fd == server) {
                int client = accept(server, NULL, NULL);
                if (client >= 0) {
                    FD_SET(client, &all);
                    if (client > maxfd) maxfd = client;
                }
                continue;
            }
            modbus_set_socket(ctx, fd);
            int len = modbus_receive(ctx, query);
            if (len > 0) {
                int header = modbus_get_header_length(ctx);
                int function = query[header];
                int address = (query[header + 1] << 8) | query[header + 2];
                modbus_reply(ctx, query, len, map);
                if (function == 0x06 && address < 1000) {
                    printf("write holding %d = %d\n", address, map->tab_registers[address]);
                    fflush(stdout);
                } else if (function == 0x10) {
                    int count = (query[header + 3] << 8) | query[header + 4];
                    for (int i = 0; i < count && address + i < 1000; i++) printf("write holding %d = %d\n", address + i, map->tab_registers[address + i]);
                    fflush(stdout);
                } else if (function == 0x05 && address < 2000) {
                    printf("write coil %d = %d\n", address, map->tab_bits[address]);
                    fflush(stdout);
                }
            } else if (len < 0) {
                close(fd);
                FD_CLR(fd, &all);
            }
        }
    }
    modbus_mapping_free(map);
    modbus_free(ctx);
    return 0;
}
