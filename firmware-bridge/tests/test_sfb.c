/* Host unit tests for the firmware bridge: codec vectors, the session,
 * retransmit, bad CRC, truncated and garbage input. Run: make test */
#include "sfb.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures, checks;
#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        checks++;                                                          \
        if (!(cond)) {                                                     \
            failures++;                                                    \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                  \
            fputc('\n', stderr);                                           \
        }                                                                  \
    } while (0)

/* ---- a scripted host: a clock, an output capture, write callbacks ---- */

static uint32_t clock_ms;
static uint8_t out[4096];
static size_t out_len;
static int writes_seen;
static uint8_t last_write_id;
static uint32_t last_write_raw;
static int refuse_writes;

static size_t cap_write(void *ctx, const uint8_t *b, size_t n) {
    (void)ctx;
    if (out_len + n > sizeof out) n = sizeof out - out_len;
    memcpy(out + out_len, b, n);
    out_len += n;
    return n;
}
static uint32_t cap_now(void *ctx) { (void)ctx; return clock_ms; }
static int cap_on_write(void *ctx, uint8_t id, uint32_t raw) {
    sfb_device *dev = ctx;
    writes_seen++;
    last_write_id = id;
    last_write_raw = raw;
    if (refuse_writes) return SFB_REJECT_APPLICATION;
    sfb_set(dev, id, raw);
    return 0;
}

static const sfb_register regs[] = {
    {"counter", SFB_U32, SFB_READ},
    {"setpoint", SFB_I16, SFB_READ_WRITE},
    {"temperature", SFB_F32, SFB_READ},
};
static sfb_device dev;
static sfb_config cfg = {"pump", "SN0042", regs, 3, cap_write, cap_now, cap_on_write, &dev};

typedef struct {
    uint8_t type, seq, ack;
    uint8_t payload[256];
    size_t len;
} packet;

/* Takes the next packet the device sent out of the capture; 0 if none. */
static int next_packet(packet *p) {
    size_t end = 0;
    while (end < out_len && out[end] != 0) end++;
    if (end == out_len) return 0;
    uint8_t raw[300];
    size_t n = sfb_cobs_decode(out, end, raw, sizeof raw);
    memmove(out, out + end + 1, out_len - end - 1);
    out_len -= end + 1;
    if (n == (size_t)-1 || n < 5) return -1;
    if (sfb_crc16(raw, n - 2) != ((raw[n - 2] << 8) | raw[n - 1])) return -1;
    p->type = raw[0];
    p->seq = raw[1];
    p->ack = raw[2];
    p->len = n - 5;
    memcpy(p->payload, raw + 3, p->len);
    return 1;
}

static void host_send(uint8_t type, uint8_t seq, uint8_t ack, const uint8_t *payload, size_t len) {
    uint8_t wire[SFB_WIRE_MAX + 8];
    size_t n = sfb_frame(type, seq, ack, payload, len, wire, sizeof wire);
    CHECK(n > 0, "frame type %u did not encode", type);
    sfb_input(&dev, wire, n);
}

static void drain(void) { out_len = 0; }

/* Brings a fresh device to the running phase; returns the host's next seq. */
static uint8_t handshake(void) {
    packet p;
    clock_ms = 1000;
    out_len = 0;
    sfb_init(&dev, &cfg);
    sfb_poll(&dev);
    CHECK(next_packet(&p) == 1 && p.type == SFB_HELLO, "expected HELLO");
    CHECK(p.payload[0] == SFB_VERSION && p.payload[1] == 3, "HELLO version %u count %u", p.payload[0], p.payload[1]);
    CHECK(p.payload[2] == 4 && memcmp(p.payload + 3, "pump", 4) == 0, "HELLO name");
    uint8_t seq = p.seq;
    host_send(SFB_ACK, 0, seq, NULL, 0);
    for (int i = 0; i < 3; i++) {
        sfb_poll(&dev);
        CHECK(next_packet(&p) == 1 && p.type == SFB_DESCRIBE, "expected DESCRIBE %d", i);
        CHECK(p.payload[0] == i && p.payload[1] == regs[i].type && p.payload[2] == regs[i].access, "DESCRIBE %d fields", i);
        CHECK(p.payload[3] == strlen(regs[i].name) && memcmp(p.payload + 4, regs[i].name, p.payload[3]) == 0, "DESCRIBE %d name", i);
        host_send(SFB_ACK, 0, p.seq, NULL, 0);
    }
    CHECK(!sfb_online(&dev), "online before WELCOME");
    host_send(SFB_WELCOME, 1, 0, NULL, 0);
    CHECK(sfb_online(&dev), "not online after WELCOME");
    CHECK(next_packet(&p) == 1 && p.type == SFB_ACK && p.ack == 1, "WELCOME not acked");
    return 2;
}

static uint32_t be32(const uint8_t *p) { return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3]; }

/* ---- codec vectors shared with the Swift host (tests/vectors.txt) ---- */

static size_t unhex(const char *s, uint8_t *b, size_t cap) {
    if (strcmp(s, "-") == 0) return 0;
    size_t n = strlen(s) / 2;
    if (n > cap) n = cap;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(s + 2 * i, "%2x", &v);
        b[i] = (uint8_t)v;
    }
    return n;
}

static void test_vectors(const char *path) {
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "cannot open %s", path);
    if (!f) return;
    char line[4096], kind[16], a[1200], b[1200], c[16], d[16], e[1200];
    int count = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#' || line[0] == '\n') continue;
        uint8_t in[600], want[600], got[700];
        if (sscanf(line, "%15s", kind) != 1) continue;
        if (strcmp(kind, "crc16") == 0 && sscanf(line, "%*s %1199s %1199s", a, b) == 2) {
            size_t n = unhex(a, in, sizeof in);
            unsigned crc;
            sscanf(b, "%x", &crc);
            CHECK(sfb_crc16(in, n) == crc, "crc16 of %s: got %04x want %s", a, sfb_crc16(in, n), b);
            count++;
        } else if (strcmp(kind, "cobs") == 0 && sscanf(line, "%*s %1199s %1199s", a, b) == 2) {
            size_t n = unhex(a, in, sizeof in), m = unhex(b, want, sizeof want);
            size_t e1 = sfb_cobs_encode(in, n, got, sizeof got);
            CHECK(e1 == m && memcmp(got, want, m) == 0, "cobs encode of %.40s…", a);
            uint8_t back[600];
            size_t d1 = sfb_cobs_decode(want, m, back, sizeof back);
            CHECK(d1 == n && memcmp(back, in, n) == 0, "cobs decode of %.40s…", b);
            count++;
        } else if (strcmp(kind, "frame") == 0 && sscanf(line, "%*s %15s %15s %15s %1199s %1199s", c, d, a, b, e) == 5) {
            unsigned t, s, k;
            sscanf(c, "%x", &t);
            sscanf(d, "%x", &s);
            sscanf(a, "%x", &k);
            size_t n = unhex(b, in, sizeof in), m = unhex(e, want, sizeof want);
            size_t w = sfb_frame((uint8_t)t, (uint8_t)s, (uint8_t)k, in, n, got, sizeof got);
            CHECK(w == m && memcmp(got, want, m) == 0, "frame %s %s %s %s", c, d, a, b);
            count++;
        }
    }
    fclose(f);
    CHECK(count >= 20, "only %d vectors read", count);
}

/* ---- the session ---- */

static void test_report_on_change(void) {
    packet p;
    uint8_t seq = handshake();
    (void)seq;
    sfb_set(&dev, 0, 7);
    sfb_set(&dev, 2, sfb_from_f32(21.5f));
    sfb_poll(&dev);
    CHECK(next_packet(&p) == 1 && p.type == SFB_REPORT, "expected REPORT");
    CHECK(p.len == 15, "first report carries all 3 registers, got %zu bytes", p.len);
    CHECK(p.payload[0] == 0 && be32(p.payload + 1) == 7, "counter = 7");
    CHECK(p.payload[10] == 2 && sfb_to_f32(be32(p.payload + 11)) == 21.5f, "temperature = 21.5");
    CHECK(!sfb_idle(&dev), "idle with a report in flight");
    host_send(SFB_ACK, 0, p.seq, NULL, 0);
    CHECK(sfb_idle(&dev), "not idle after the ack");
    sfb_set(&dev, 0, 7); /* unchanged: nothing to report */
    sfb_poll(&dev);
    CHECK(next_packet(&p) == 0, "unchanged value was reported");
    sfb_set(&dev, 0, 8);
    sfb_poll(&dev);
    CHECK(next_packet(&p) == 1 && p.type == SFB_REPORT && p.len == 5 && be32(p.payload + 1) == 8, "only the change is reported");
}

static void test_retransmit(void) {
    packet p, again;
    handshake();
    sfb_poll(&dev);
    CHECK(next_packet(&p) == 1 && p.type == SFB_REPORT, "expected REPORT");
    clock_ms += SFB_RETRANSMIT_MS - 1;
    sfb_poll(&dev);
    CHECK(next_packet(&again) == 0, "retransmitted too early");
    clock_ms += 1;
    sfb_poll(&dev);
    CHECK(next_packet(&again) == 1 && again.seq == p.seq && again.len == p.len && memcmp(again.payload, p.payload, p.len) == 0,
          "retransmission differs");
    CHECK(dev.stats.retransmits == 1, "retransmits = %u", dev.stats.retransmits);
    /* A change while a report is outstanding waits for the ack (stop-and-wait). */
    sfb_set(&dev, 0, 99);
    sfb_poll(&dev);
    CHECK(next_packet(&again) == 0, "sent a second packet before the first was acked");
    host_send(SFB_ACK, 0, p.seq, NULL, 0);
    sfb_poll(&dev);
    CHECK(next_packet(&again) == 1 && again.type == SFB_REPORT && again.seq != p.seq && be32(again.payload + 1) == 99, "change after ack");
    /* A stale ack (for an older seq) does not release the new one. */
    host_send(SFB_ACK, 0, p.seq, NULL, 0);
    CHECK(!sfb_idle(&dev), "a stale ack released the outstanding packet");
}

static void test_writes(void) {
    packet p;
    uint8_t seq = handshake();
    sfb_poll(&dev);
    next_packet(&p);
    host_send(SFB_ACK, 0, p.seq, NULL, 0);
    writes_seen = 0;
    uint8_t w[5] = {1, 0xff, 0xff, 0xff, 0xd6}; /* setpoint = -42 */
    host_send(SFB_WRITE, seq, 0, w, 5);
    CHECK(writes_seen == 1 && last_write_id == 1 && (int32_t)last_write_raw == -42, "write applied");
    CHECK(next_packet(&p) == 1 && p.type == SFB_ACK && p.ack == seq, "write acked");
    host_send(SFB_WRITE, seq, 0, w, 5); /* the ack was lost: the host resends */
    CHECK(writes_seen == 1, "a duplicate write was applied again");
    CHECK(dev.stats.rx_duplicates == 1, "duplicates = %u", dev.stats.rx_duplicates);
    CHECK(next_packet(&p) == 1 && p.type == SFB_ACK && p.ack == seq, "duplicate re-acked");
    sfb_poll(&dev);
    CHECK(next_packet(&p) == 1 && p.type == SFB_REPORT && p.payload[0] == 1 && be32(p.payload + 1) == 0xffffffd6u, "write confirmed by a report");
    host_send(SFB_ACK, 0, p.seq, NULL, 0);
    uint8_t ro[5] = {0, 0, 0, 0, 1}; /* counter is read-only */
    host_send(SFB_WRITE, (uint8_t)(seq + 1), 0, ro, 5);
    CHECK(writes_seen == 1, "a read-only register reached the application");
    next_packet(&p); /* ack */
    sfb_poll(&dev);
    CHECK(next_packet(&p) == 1 && p.type == SFB_REJECT && p.payload[0] == 0 && p.payload[1] == SFB_REJECT_READ_ONLY, "read-only rejected");
    host_send(SFB_ACK, 0, p.seq, NULL, 0);
    refuse_writes = 1;
    host_send(SFB_WRITE, (uint8_t)(seq + 2), 0, w, 5);
    refuse_writes = 0;
    next_packet(&p);
    sfb_poll(&dev);
    CHECK(next_packet(&p) == 1 && p.type == SFB_REJECT && p.payload[1] == SFB_REJECT_APPLICATION, "application refusal reported");
    uint8_t unknown[5] = {9, 0, 0, 0, 1};
    host_send(SFB_ACK, 0, p.seq, NULL, 0);
    host_send(SFB_WRITE, (uint8_t)(seq + 3), 0, unknown, 5);
    next_packet(&p);
    sfb_poll(&dev);
    CHECK(next_packet(&p) == 1 && p.type == SFB_REJECT && p.payload[0] == 9 && p.payload[1] == SFB_REJECT_UNKNOWN, "unknown register rejected");
}

static void test_bad_input(void) {
    packet p;
    handshake();
    sfb_poll(&dev);
    next_packet(&p);
    host_send(SFB_ACK, 0, p.seq, NULL, 0);
    sfb_stats before = dev.stats;
    /* Bad CRC: a WRITE with one payload bit flipped is dropped, not applied. */
    uint8_t wire[64];
    uint8_t w[5] = {1, 0, 0, 0, 5};
    size_t n = sfb_frame(SFB_WRITE, 2, 0, w, 5, wire, sizeof wire);
    wire[6] ^= 0x01;
    writes_seen = 0;
    sfb_input(&dev, wire, n);
    CHECK(writes_seen == 0 && dev.stats.rx_bad_crc == before.rx_bad_crc + 1, "bad CRC: writes %d, bad crc %u", writes_seen, dev.stats.rx_bad_crc);
    /* Truncated: a frame cut short (delimiter early). */
    n = sfb_frame(SFB_WRITE, 2, 0, w, 5, wire, sizeof wire);
    uint8_t cut[4] = {wire[0], wire[1], wire[2], 0};
    sfb_input(&dev, cut, 4);
    CHECK(writes_seen == 0, "a truncated frame was applied");
    CHECK(dev.stats.rx_bad_frame + dev.stats.rx_bad_crc > before.rx_bad_frame + before.rx_bad_crc + 1, "truncated frame not counted");
    /* Garbage longer than any frame, then a valid frame: recovered. */
    uint8_t junk[500];
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (uint8_t)(i * 37 + 1) | 1;
    sfb_input(&dev, junk, sizeof junk);
    sfb_input(&dev, (const uint8_t *)"\0", 1);
    CHECK(dev.stats.rx_bad_frame > before.rx_bad_frame, "overlong garbage not counted");
    sfb_input(&dev, wire, n);
    CHECK(writes_seen == 1 && last_write_raw == 5, "valid frame after garbage not applied");
    /* Random bytes: never a crash, never an out-of-bounds (run under ASan by make test). */
    uint32_t x = 12345;
    for (int i = 0; i < 200000; i++) {
        x = x * 1664525u + 1013904223u;
        uint8_t b = (uint8_t)(x >> 24);
        if ((x & 0xF) == 0) b = 0;
        sfb_input(&dev, &b, 1);
        if ((i & 255) == 0) {
            clock_ms += 7;
            sfb_poll(&dev);
            drain();
        }
    }
    CHECK(1, "survived random input");
}

static void test_sync_restarts(void) {
    packet p;
    handshake();
    host_send(SFB_SYNC, 0, 0, NULL, 0);
    CHECK(!sfb_online(&dev), "still online after SYNC");
    drain();
    sfb_poll(&dev);
    CHECK(next_packet(&p) == 1 && p.type == SFB_HELLO && p.seq == 1, "SYNC must restart with HELLO seq 1, got type %u seq %u", p.type, p.seq);
}

static void test_heartbeat(void) {
    packet p;
    handshake();
    sfb_poll(&dev);
    next_packet(&p);
    host_send(SFB_ACK, 0, p.seq, NULL, 0);
    drain();
    clock_ms += SFB_HEARTBEAT_MS;
    sfb_poll(&dev);
    CHECK(next_packet(&p) == 1 && p.type == SFB_HEARTBEAT, "no heartbeat after %u ms of silence", SFB_HEARTBEAT_MS);
}

/* Hardening 11: sfb_init checks its config and says why it refuses. */
static void test_init_checks(void) {
    sfb_register many[SFB_REGISTERS_MAX + 1];
    for (int i = 0; i <= SFB_REGISTERS_MAX; i++) many[i] = (sfb_register){"r", SFB_U16, SFB_READ};
    sfb_config c = cfg;
    c.registers = many;
    c.count = SFB_REGISTERS_MAX + 1;
    CHECK(sfb_init(&dev, &c) == SFB_ECOUNT, "count %d over the maximum was accepted", c.count);
    CHECK(strcmp(sfb_strerror(SFB_ECOUNT), "more registers than SFB_REGISTERS_MAX") == 0, "strerror");
    /* Refused: the device does nothing, writes nowhere, and says so. */
    out_len = 0;
    sfb_poll(&dev);
    sfb_input(&dev, (const uint8_t *)"\x01\x02\x00", 3);
    CHECK(out_len == 0 && sfb_set(&dev, 0, 1) == SFB_ESTATE && !sfb_online(&dev), "a refused device acted");
    c.count = SFB_REGISTERS_MAX;
    CHECK(sfb_init(&dev, &c) == SFB_OK, "the maximum count was refused");
    c = cfg;
    c.name = "a-name-longer-than-twenty-four";
    CHECK(sfb_init(&dev, &c) == SFB_ENAME, "a long name was accepted");
    c = cfg;
    c.write = NULL;
    CHECK(sfb_init(&dev, &c) == SFB_EARG, "a NULL write callback was accepted");
    CHECK(sfb_init(NULL, &cfg) == SFB_EARG && sfb_init(&dev, NULL) == SFB_EARG, "NULL arguments");
    sfb_register bad[] = {{"x", 9, SFB_READ}};
    c = cfg;
    c.registers = bad;
    c.count = 1;
    CHECK(sfb_init(&dev, &c) == SFB_ETYPE, "an unknown type was accepted");
    CHECK(sfb_init(&dev, &cfg) == SFB_OK, "the test config was refused");
    CHECK(sfb_set(&dev, 3, 1) == SFB_EID, "an unknown id");
}

/* Hardening 11: the 8-bit seq goes 255 → 1 (0 means "none") on both sides. */
static void test_seq_wrap(void) {
    packet p;
    uint8_t host_seq = handshake();
    uint8_t seen = 0;
    int wrapped = 0;
    for (int i = 0; i < 600; i++) {
        sfb_set(&dev, 0, (uint32_t)i + 1000);
        sfb_poll(&dev);
        CHECK(next_packet(&p) == 1 && p.type == SFB_REPORT, "report %d", i);
        CHECK(p.seq != 0, "seq 0 used");
        if (seen == 255) {
            CHECK(p.seq == 1, "after 255 came %u", p.seq);
            wrapped++;
        } else if (seen) {
            CHECK(p.seq == seen + 1, "after %u came %u", seen, p.seq);
        }
        seen = p.seq;
        CHECK(be32(p.payload + 1) == (uint32_t)i + 1000, "report %d carries %u", i, be32(p.payload + 1));
        host_send(SFB_ACK, 0, p.seq, NULL, 0);
        /* The host's own seq wraps too: its writes keep being taken. */
        uint8_t w[5] = {1, 0, 0, 0, (uint8_t)(i & 0x7f)};
        host_send(SFB_WRITE, host_seq, 0, w, sizeof w);
        CHECK(next_packet(&p) == 1 && p.type == SFB_ACK && p.ack == host_seq, "write seq %u not acked", host_seq);
        host_seq = host_seq == 255 ? 1 : (uint8_t)(host_seq + 1);
        sfb_poll(&dev); /* the confirming report */
        if (next_packet(&p) == 1) {
            seen = p.seq;
            host_send(SFB_ACK, 0, p.seq, NULL, 0);
        }
    }
    CHECK(wrapped >= 1, "the device seq never wrapped");
    CHECK(last_write_raw == (600 - 1) % 128, "the last write after the host's wrap was %u", last_write_raw);
}

/* Hardening 11: the millisecond clock wraps at 2^32; timers keep working across it. */
static void test_clock_wrap(void) {
    packet p;
    handshake();
    sfb_poll(&dev);
    next_packet(&p);
    host_send(SFB_ACK, 0, p.seq, NULL, 0);
    drain();
    clock_ms = 0xFFFFFFFFu - SFB_RETRANSMIT_MS / 2; /* just before the wrap */
    sfb_set(&dev, 0, 7);
    sfb_poll(&dev);
    CHECK(next_packet(&p) == 1 && p.type == SFB_REPORT, "report before the wrap");
    clock_ms += SFB_RETRANSMIT_MS; /* wraps past zero */
    CHECK(clock_ms < 1000, "the test clock wrapped");
    sfb_poll(&dev);
    packet again;
    CHECK(next_packet(&again) == 1 && again.seq == p.seq, "no retransmission across the clock wrap");
    host_send(SFB_ACK, 0, p.seq, NULL, 0);
    drain();
    clock_ms += SFB_HEARTBEAT_MS - 1;
    sfb_poll(&dev);
    CHECK(next_packet(&p) == 0, "heartbeat too early after the wrap");
    clock_ms += 1;
    sfb_poll(&dev);
    CHECK(next_packet(&p) == 1 && p.type == SFB_HEARTBEAT, "no heartbeat after the wrap");
}

int main(int argc, char **argv) {
    test_vectors(argc > 1 ? argv[1] : "tests/vectors.txt");
    test_report_on_change();
    test_retransmit();
    test_writes();
    test_bad_input();
    test_sync_restarts();
    test_heartbeat();
    test_init_checks();
    test_seq_wrap();
    test_clock_wrap();
    printf("firmware-bridge: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
