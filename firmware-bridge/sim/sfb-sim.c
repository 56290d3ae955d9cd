/* sfb-sim: the real firmware bridge library on a pseudo-terminal, playing a
 * small device, for the agent's serial path in tests and in the demo.
 *
 *   sfb-sim [--port PATH | --pty] [--name N] [--serial S] [--count N]
 *           [--period-ms P] [--clock-hz H] [--noise RATE] [--seed S]
 *
 * --pty creates a pseudo-terminal and prints "pty /dev/pts/N"; the agent
 * opens that path. --count N steps the `counter` register 1…N, each step once
 * the previous one was acknowledged, then prints "counted N". --period-ms P
 * changes `temperature` and `counter` every P ms (the demo). --clock-hz H
 * sets `clock` to the wall clock in ms (low 32 bits) H times a second, so a
 * reader upstream can time change → upstream (the benchmark). --noise RATE
 * corrupts that fraction of bytes in both directions (drop, flip, or insert
 * garbage), from a seeded generator. Writes from the host print
 * "write NAME=VALUE". Stops on SIGTERM or SIGINT.
 */
#include "sfb.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stopping;
static void on_signal(int s) { (void)s; stopping = 1; }

static int fd = -1;
static double noise;
static uint64_t rng_state = 1;
static unsigned long noise_events;

static uint32_t rng(void) { /* SplitMix64 */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (uint32_t)((z ^ (z >> 31)) >> 32);
}
static int chance(void) { return noise > 0 && (double)rng() / 4294967296.0 < noise; }

/* Applies line noise to `in`, writing the result to `out` (up to 2× longer). */
static size_t corrupt(const uint8_t *in, size_t len, uint8_t *out) {
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (chance()) {
            noise_events++;
            switch (rng() % 3) {
            case 0: continue;                                        /* dropped */
            case 1: out[n++] = (uint8_t)(in[i] ^ (1u << (rng() % 8))); continue; /* flipped */
            default: out[n++] = (uint8_t)rng(); break;               /* garbage inserted */
            }
        }
        out[n++] = in[i];
    }
    return n;
}

static uint32_t now_ms(void *ctx) {
    (void)ctx;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint32_t)((uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u);
}

static size_t write_out(void *ctx, const uint8_t *bytes, size_t len) {
    (void)ctx;
    uint8_t buf[2 * SFB_WIRE_MAX];
    size_t n = corrupt(bytes, len, buf);
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, buf + done, n - done);
        if (w < 0) {
            if (errno == EINTR) continue;
            break; /* EAGAIN or no reader: the retransmit recovers */
        }
        done += (size_t)w;
    }
    return len;
}

enum { R_COUNTER, R_SETPOINT, R_TEMPERATURE, R_ENABLE, R_CLOCK };
static const sfb_register registers[] = {
    {"counter", SFB_U32, SFB_READ},
    {"setpoint", SFB_I16, SFB_READ_WRITE},
    {"temperature", SFB_F32, SFB_READ},
    {"enable", SFB_BOOL, SFB_READ_WRITE},
    {"clock", SFB_U32, SFB_READ},
};

static uint32_t wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint32_t)((uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u);
}
static sfb_device device;

static int on_write(void *ctx, uint8_t id, uint32_t raw) {
    (void)ctx;
    if (id == R_SETPOINT) {
        int32_t v = (int32_t)raw;
        if (v < -32768 || v > 32767) return SFB_REJECT_RANGE;
        printf("write setpoint=%d\n", (int)v);
    } else if (id == R_ENABLE) {
        if (raw > 1) return SFB_REJECT_RANGE;
        printf("write enable=%s\n", raw ? "true" : "false");
    }
    fflush(stdout);
    sfb_set(&device, id, raw);
    return 0;
}

static int make_raw(int f) {
    struct termios t;
    if (tcgetattr(f, &t) != 0) return -1;
    cfmakeraw(&t);
    return tcsetattr(f, TCSANOW, &t);
}

int main(int argc, char **argv) {
    const char *port = NULL, *name = "sim", *serial = "SIM0001";
    int use_pty = 0;
    long count = 0, period = 0, clock_hz = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            printf("usage: sfb-sim (--pty | --port PATH) [--name NAME] [--serial SERIAL] [--count N] [--period-ms MS]\n"
                   "               [--clock-hz HZ] [--noise FRACTION] [--seed N]\n"
                   "Runs the firmware bridge library as a simulated device on a new pseudo-terminal (printed as\n"
                   "\"pty PATH\") or on a serial port. --count counts a register from 0 to N, one step every\n"
                   "--period-ms; --clock-hz stamps a clock register that often; --noise drops, flips or inserts\n"
                   "that fraction of bytes both ways, from --seed. Writes it receives are printed.\n");
            return 0;
        }
        if (strcmp(a, "--pty") == 0) { use_pty = 1; continue; }
        if (!v) { fprintf(stderr, "sfb-sim: %s needs a value\n", a); return 64; }
        if (strcmp(a, "--port") == 0) port = v;
        else if (strcmp(a, "--name") == 0) name = v;
        else if (strcmp(a, "--serial") == 0) serial = v;
        else if (strcmp(a, "--count") == 0) count = atol(v);
        else if (strcmp(a, "--period-ms") == 0) period = atol(v);
        else if (strcmp(a, "--clock-hz") == 0) clock_hz = atol(v);
        else if (strcmp(a, "--noise") == 0) noise = atof(v);
        else if (strcmp(a, "--seed") == 0) rng_state = strtoull(v, NULL, 10);
        else { fprintf(stderr, "sfb-sim: unknown option %s\n", a); return 64; }
        i++;
    }
    int keep_slave = -1;
    if (use_pty) {
        fd = posix_openpt(O_RDWR | O_NOCTTY);
        if (fd < 0 || grantpt(fd) != 0 || unlockpt(fd) != 0) { perror("sfb-sim: posix_openpt"); return 71; }
        const char *slave = ptsname(fd);
        /* Hold the slave open in raw mode: no echo of our bytes back to us
         * before the agent opens it, and no hangup when the agent closes it. */
        keep_slave = open(slave, O_RDWR | O_NOCTTY);
        if (keep_slave < 0 || make_raw(keep_slave) != 0) { perror("sfb-sim: slave"); return 71; }
        printf("pty %s\n", slave);
    } else if (port) {
        fd = open(port, O_RDWR | O_NOCTTY);
        if (fd < 0) { fprintf(stderr, "sfb-sim: %s: %s\n", port, strerror(errno)); return 66; }
        make_raw(fd);
        printf("port %s\n", port);
    } else {
        fprintf(stderr, "sfb-sim: give --pty or --port PATH\n");
        return 64;
    }
    fflush(stdout);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);

    sfb_config config = {name, serial, registers, 5, write_out, now_ms, on_write, NULL};
    int rc = sfb_init(&device, &config);
    if (rc != SFB_OK) {
        fprintf(stderr, "sfb-sim: sfb_init: %s\n", sfb_strerror(rc));
        return 2;
    }
    sfb_set(&device, R_TEMPERATURE, sfb_from_f32(20.0f));
    long counted = 0;
    int announced = 0;
    uint32_t next_tick = now_ms(NULL) + (uint32_t)period;
    uint32_t next_clock = now_ms(NULL);
    while (!stopping) {
        struct pollfd p = {fd, POLLIN, 0};
        int r = poll(&p, 1, 2);
        if (r > 0 && (p.revents & POLLIN)) {
            uint8_t buf[512], noisy[1024];
            ssize_t n = read(fd, buf, sizeof buf);
            if (n > 0) {
                size_t m = corrupt(buf, (size_t)n, noisy);
                sfb_input(&device, noisy, m);
            }
        }
        if (count > 0 && counted < count && sfb_idle(&device)) {
            sfb_set(&device, R_COUNTER, (uint32_t)++counted);
        } else if (count > 0 && counted == count && sfb_idle(&device) && !announced) {
            announced = 1;
            printf("counted %ld\n", counted);
            fflush(stdout);
        }
        if (period > 0 && (int32_t)(now_ms(NULL) - next_tick) >= 0) {
            next_tick += (uint32_t)period;
            static uint32_t tick;
            tick++;
            sfb_set(&device, R_COUNTER, tick);
            sfb_set(&device, R_TEMPERATURE, sfb_from_f32(20.0f + 5.0f * (float)sin(tick / 10.0)));
        }
        if (clock_hz > 0 && (int32_t)(now_ms(NULL) - next_clock) >= 0) {
            next_clock += (uint32_t)(1000 / clock_hz);
            sfb_set(&device, R_CLOCK, wall_ms());
        }
        sfb_poll(&device);
    }
    fprintf(stderr, "sfb-sim: stopped; rx %u bad-crc %u bad-frame %u dup %u tx %u retransmits %u noise %lu\n",
            device.stats.rx_packets, device.stats.rx_bad_crc, device.stats.rx_bad_frame, device.stats.rx_duplicates,
            device.stats.tx_packets, device.stats.retransmits, noise_events);
    if (keep_slave >= 0) close(keep_slave);
    close(fd);
    return 0;
}
