/*
 * sfb: the Spook firmware bridge, device side.
 *
 * Portable C99. No malloc, no OS, no globals: the caller owns an sfb_device,
 * feeds it received bytes with sfb_input(), calls sfb_poll() from its main
 * loop, and supplies output and clock callbacks. The wire format is in
 * docs/firmware-bridge.md; the host side is Sources/SpookDevices.
 *
 *   packet = type u8 | seq u8 | ack u8 | payload | crc16 (CCITT-FALSE, big-endian)
 *   wire   = COBS(packet) 0x00
 *
 * Sequenced packets (seq 1…255) are sent one at a time and retransmitted
 * until the peer's ack field names them (stop-and-wait: a 16-register device
 * needs one retransmit buffer, not a window of them).
 */
#ifndef SFB_H
#define SFB_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Compile-time sizes; override with -D. RAM is about
 * 2 * (SFB_PAYLOAD_MAX + 8) + 5 * SFB_REGISTERS_MAX + 40 bytes. */
#ifndef SFB_PAYLOAD_MAX
#define SFB_PAYLOAD_MAX 64
#endif
#ifndef SFB_REGISTERS_MAX
#define SFB_REGISTERS_MAX 16
#endif
#ifndef SFB_RETRANSMIT_MS
#define SFB_RETRANSMIT_MS 100u
#endif
#ifndef SFB_HEARTBEAT_MS
#define SFB_HEARTBEAT_MS 1000u
#endif

#if SFB_PAYLOAD_MAX > 240
#error "SFB_PAYLOAD_MAX is at most 240: encoded packets must fit a uint8_t length"
#endif
#if SFB_REGISTERS_MAX > 32
#error "SFB_REGISTERS_MAX is at most 32: dirty registers are one uint32_t bitmask"
#endif

#define SFB_VERSION 1u
#define SFB_NAME_MAX 24u
#define SFB_PACKET_MAX (SFB_PAYLOAD_MAX + 5)
/* COBS adds one byte per 254 and the delimiter. */
#define SFB_WIRE_MAX (SFB_PACKET_MAX + SFB_PACKET_MAX / 254 + 2)

/* Packet types. */
enum {
    SFB_HELLO = 0x01,     /* dev→host, sequenced: version, count, name, serial */
    SFB_WELCOME = 0x02,   /* host→dev, sequenced: descriptor received, start reporting */
    SFB_REPORT = 0x03,    /* dev→host, sequenced: (id, value)… */
    SFB_WRITE = 0x04,     /* host→dev, sequenced: (id, value)… */
    SFB_REJECT = 0x05,    /* dev→host, sequenced: id, reason */
    SFB_HEARTBEAT = 0x06, /* both, not sequenced */
    SFB_SYNC = 0x07,      /* host→dev, not sequenced: start over with HELLO */
    SFB_ACK = 0x08,       /* both, not sequenced: carries only the ack field */
    SFB_DESCRIBE = 0x09   /* dev→host, sequenced: id, type, access, name */
};

/* Register value types; every value travels as 4 bytes, big-endian. */
enum { SFB_BOOL = 0, SFB_U16 = 1, SFB_I16 = 2, SFB_U32 = 3, SFB_I32 = 4, SFB_F32 = 5 };
enum { SFB_READ = 0, SFB_READ_WRITE = 1 };

/* Error codes: every entry point that can fail returns 0 or one of these
 * (negative); sfb_strerror() says what it means. */
enum {
    SFB_OK = 0,
    SFB_EID = -1,       /* no register with that id */
    SFB_EARG = -2,      /* a NULL device, config or callback */
    SFB_ECOUNT = -3,    /* config count > SFB_REGISTERS_MAX */
    SFB_ENAME = -4,     /* a device, serial or register name NULL, empty or > SFB_NAME_MAX */
    SFB_ETYPE = -5,     /* a register type or access out of range */
    SFB_ESTATE = -6     /* the device was not initialised (or its sfb_init failed) */
};
const char *sfb_strerror(int code);

/* Why a write was refused (SFB_REJECT). */
enum { SFB_REJECT_UNKNOWN = 1, SFB_REJECT_READ_ONLY = 2, SFB_REJECT_RANGE = 3, SFB_REJECT_APPLICATION = 4 };

typedef struct {
    const char *name; /* a QRegister name: [a-z0-9_-], ≤ 24 bytes */
    uint8_t type;
    uint8_t access;
} sfb_register;

typedef struct {
    const char *name;   /* ≤ 24 bytes */
    const char *serial; /* ≤ 24 bytes */
    const sfb_register *registers;
    uint8_t count; /* ≤ SFB_REGISTERS_MAX */
    /* Sends bytes; returns how many were taken (the rest is dropped: the
     * retransmit recovers). */
    size_t (*write)(void *ctx, const uint8_t *bytes, size_t len);
    /* A millisecond clock; wraps at 2^32. */
    uint32_t (*now_ms)(void *ctx);
    /* The host asks to set register `id` to `raw`; return 0 to accept (then
     * call sfb_set with the value the device now has) or an SFB_REJECT_ reason. */
    int (*on_write)(void *ctx, uint8_t id, uint32_t raw);
    void *ctx;
} sfb_config;

typedef struct {
    uint32_t rx_packets;
    uint32_t rx_bad_crc;
    uint32_t rx_bad_frame; /* COBS errors, short packets, overlong frames */
    uint32_t rx_duplicates;
    uint32_t tx_packets;
    uint32_t retransmits;
} sfb_stats;

typedef struct {
    const sfb_config *config;
    uint32_t values[SFB_REGISTERS_MAX];
    uint32_t dirty; /* bit per register: changed since last reported */
    uint8_t phase;  /* see sfb.c */
    uint8_t described;
    uint8_t tx_seq;        /* seq of the outstanding packet, 0: none */
    uint8_t next_seq;      /* next seq to use */
    uint8_t rx_seq;        /* last in-order seq received, 0: none */
    uint8_t reject_id;     /* a refused write to report, with reason */
    uint8_t reject_reason;
    uint8_t rx_len;
    uint8_t rx_overflow;
    uint8_t tx_len;
    uint8_t tx_type;
    uint32_t tx_at;        /* when the outstanding packet was last sent */
    uint32_t heard_at;     /* when the host was last heard */
    uint32_t sent_at;      /* when anything was last sent */
    uint8_t rx[SFB_WIRE_MAX];
    uint8_t tx[SFB_WIRE_MAX]; /* the outstanding packet, encoded */
    sfb_stats stats;
} sfb_device;

/* Codec, exposed for tests and for hosts written in C. */
uint16_t sfb_crc16(const uint8_t *data, size_t len);
/* Returns the encoded length (without the 0x00 delimiter), or 0 if `cap` is too small. */
size_t sfb_cobs_encode(const uint8_t *in, size_t len, uint8_t *out, size_t cap);
/* Returns the decoded length, or (size_t)-1 on a malformed frame. */
size_t sfb_cobs_decode(const uint8_t *in, size_t len, uint8_t *out, size_t cap);
/* Builds a packet with CRC, COBS-encodes it and appends 0x00. Returns the
 * wire length, or 0 if it does not fit in `cap` or the payload is too long. */
size_t sfb_frame(uint8_t type, uint8_t seq, uint8_t ack, const uint8_t *payload, size_t len, uint8_t *out, size_t cap);

/* Device. Checks the config (counts, names, types, callbacks); on an error
 * the device stays unusable (every other call does nothing) and the code says why. */
int sfb_init(sfb_device *dev, const sfb_config *config);
/* Feeds received bytes, any split; answers and applies writes as they complete. */
void sfb_input(sfb_device *dev, const uint8_t *bytes, size_t len);
/* Retransmits, sends reports and heartbeats; call often (every few ms). */
void sfb_poll(sfb_device *dev);
/* The application's value of register `id` changed; reported once the link
 * is free. Returns SFB_OK, SFB_EID or SFB_ESTATE. */
int sfb_set(sfb_device *dev, uint8_t id, uint32_t raw);
uint32_t sfb_get(const sfb_device *dev, uint8_t id);
/* True when the host has welcomed the device and everything is reported and acknowledged. */
int sfb_idle(const sfb_device *dev);
/* True once the host has sent WELCOME (and not SYNC since). */
int sfb_online(const sfb_device *dev);

/* Value helpers. */
uint32_t sfb_from_f32(float f);
float sfb_to_f32(uint32_t raw);

#ifdef __cplusplus
}
#endif
#endif
