/* sfb: the Spook firmware bridge, device side. See include/sfb.h. */
#include "sfb.h"

#include <string.h>

/* Session phases: what the device sends when the link is free. */
enum { PHASE_HELLO = 0, PHASE_DESCRIBE = 1, PHASE_WAIT_WELCOME = 2, PHASE_RUN = 3 };

uint16_t sfb_crc16(const uint8_t *data, size_t len) {
    uint16_t crc = 0xFFFF;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)((uint16_t)data[i] << 8);
        for (int b = 0; b < 8; b++) {
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
        }
    }
    return crc;
}

size_t sfb_cobs_encode(const uint8_t *in, size_t len, uint8_t *out, size_t cap) {
    size_t code_at = 0, o = 1;
    uint8_t code = 1;
    if (cap == 0) return 0;
    for (size_t i = 0; i < len; i++) {
        if (in[i] == 0) {
            out[code_at] = code;
            code_at = o++;
            code = 1;
        } else {
            if (o >= cap) return 0;
            out[o++] = in[i];
            code++;
            if (code == 0xFF) {
                out[code_at] = code;
                code_at = o++;
                code = 1;
            }
        }
        if (o > cap) return 0;
    }
    if (code_at >= cap) return 0;
    out[code_at] = code;
    return o;
}

size_t sfb_cobs_decode(const uint8_t *in, size_t len, uint8_t *out, size_t cap) {
    size_t i = 0, o = 0;
    while (i < len) {
        uint8_t code = in[i++];
        if (code == 0) return (size_t)-1;
        for (uint8_t k = 1; k < code; k++) {
            if (i >= len || in[i] == 0 || o >= cap) return (size_t)-1;
            out[o++] = in[i++];
        }
        if (code != 0xFF && i < len) {
            if (o >= cap) return (size_t)-1;
            out[o++] = 0;
        }
    }
    return o;
}

size_t sfb_frame(uint8_t type, uint8_t seq, uint8_t ack, const uint8_t *payload, size_t len, uint8_t *out, size_t cap) {
    uint8_t packet[SFB_PACKET_MAX];
    if (len > SFB_PAYLOAD_MAX) return 0;
    packet[0] = type;
    packet[1] = seq;
    packet[2] = ack;
    if (len) memcpy(packet + 3, payload, len);
    uint16_t crc = sfb_crc16(packet, len + 3);
    packet[len + 3] = (uint8_t)(crc >> 8);
    packet[len + 4] = (uint8_t)crc;
    size_t n = sfb_cobs_encode(packet, len + 5, out, cap);
    if (n == 0 || n >= cap) return 0;
    out[n] = 0;
    return n + 1;
}

uint32_t sfb_from_f32(float f) {
    uint32_t raw;
    memcpy(&raw, &f, sizeof raw);
    return raw;
}

float sfb_to_f32(uint32_t raw) {
    float f;
    memcpy(&f, &raw, sizeof f);
    return f;
}

static uint32_t now(const sfb_device *dev) { return dev->config->now_ms(dev->config->ctx); }

static void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static uint32_t all_registers(const sfb_device *dev) {
    return dev->config->count >= 32 ? 0xFFFFFFFFu : ((1u << dev->config->count) - 1u);
}

static void emit(sfb_device *dev, const uint8_t *bytes, size_t len) {
    dev->config->write(dev->config->ctx, bytes, len);
    dev->stats.tx_packets++;
    dev->sent_at = now(dev);
}

/* A packet that needs no acknowledgement: heartbeat, ack. */
static void send_control(sfb_device *dev, uint8_t type) {
    uint8_t wire[8];
    size_t n = sfb_frame(type, 0, dev->rx_seq, NULL, 0, wire, sizeof wire);
    if (n) emit(dev, wire, n);
}

/* The one outstanding sequenced packet, kept encoded for retransmission. */
static void send_sequenced(sfb_device *dev, uint8_t type, const uint8_t *payload, size_t len) {
    size_t n = sfb_frame(type, dev->next_seq, dev->rx_seq, payload, len, dev->tx, sizeof dev->tx);
    if (n == 0) return;
    dev->tx_len = (uint8_t)n;
    dev->tx_type = type;
    dev->tx_seq = dev->next_seq;
    dev->next_seq = dev->next_seq == 255 ? 1 : (uint8_t)(dev->next_seq + 1);
    dev->tx_at = now(dev);
    emit(dev, dev->tx, n);
}

static size_t put_name(uint8_t *p, const char *name) {
    size_t n = strlen(name);
    if (n > SFB_NAME_MAX) n = SFB_NAME_MAX;
    p[0] = (uint8_t)n;
    memcpy(p + 1, name, n);
    return n + 1;
}

static void restart_session(sfb_device *dev) {
    dev->phase = PHASE_HELLO;
    dev->described = 0;
    dev->tx_seq = 0;
    dev->next_seq = 1;
    dev->rx_seq = 0;
    dev->reject_id = 0;
    dev->reject_reason = 0;
}

const char *sfb_strerror(int code) {
    switch (code) {
    case SFB_OK: return "ok";
    case SFB_EID: return "no register with that id";
    case SFB_EARG: return "a NULL device, config or callback";
    case SFB_ECOUNT: return "more registers than SFB_REGISTERS_MAX";
    case SFB_ENAME: return "a name is NULL, empty or longer than SFB_NAME_MAX";
    case SFB_ETYPE: return "a register type or access is out of range";
    case SFB_ESTATE: return "the device is not initialised";
    default: return "unknown error";
    }
}

static int name_ok(const char *name) {
    if (!name || !name[0]) return 0;
    for (size_t i = 0; i <= SFB_NAME_MAX; i++) {
        if (!name[i]) return 1;
    }
    return 0;
}

static int check_config(const sfb_config *c) {
    if (!c->write || !c->now_ms || (c->count && !c->registers)) return SFB_EARG;
    if (c->count > SFB_REGISTERS_MAX) return SFB_ECOUNT;
    if (!name_ok(c->name) || !name_ok(c->serial)) return SFB_ENAME;
    for (uint8_t i = 0; i < c->count; i++) {
        if (!name_ok(c->registers[i].name)) return SFB_ENAME;
        if (c->registers[i].type > SFB_F32 || c->registers[i].access > SFB_READ_WRITE) return SFB_ETYPE;
    }
    return SFB_OK;
}

int sfb_init(sfb_device *dev, const sfb_config *config) {
    if (!dev) return SFB_EARG;
    memset(dev, 0, sizeof *dev);
    if (!config) return SFB_EARG;
    int rc = check_config(config);
    if (rc != SFB_OK) return rc; /* dev->config stays NULL: every other call does nothing */
    dev->config = config;
    restart_session(dev);
    dev->heard_at = dev->sent_at = now(dev);
    return SFB_OK;
}

/* The host acknowledged the outstanding packet: move the session on. */
static void acknowledged(sfb_device *dev) {
    uint8_t type = dev->tx_type;
    dev->tx_seq = 0;
    if (type == SFB_HELLO && dev->phase == PHASE_HELLO) {
        dev->phase = dev->config->count ? PHASE_DESCRIBE : PHASE_WAIT_WELCOME;
        dev->described = 0;
    } else if (type == SFB_DESCRIBE && dev->phase == PHASE_DESCRIBE) {
        if (++dev->described >= dev->config->count) dev->phase = PHASE_WAIT_WELCOME;
    }
}

static void apply_writes(sfb_device *dev, const uint8_t *p, size_t len) {
    for (size_t i = 0; i + 5 <= len; i += 5) {
        uint8_t id = p[i];
        uint32_t raw = get32(p + i + 1);
        int reason = 0;
        if (id >= dev->config->count) {
            reason = SFB_REJECT_UNKNOWN;
        } else if (dev->config->registers[id].access != SFB_READ_WRITE) {
            reason = SFB_REJECT_READ_ONLY;
        } else if (dev->config->on_write) {
            reason = dev->config->on_write(dev->config->ctx, id, raw);
        }
        if (reason) {
            dev->reject_id = id;
            dev->reject_reason = (uint8_t)reason;
        } else if (id < dev->config->count) {
            /* Confirm: the value the device now holds is reported, changed or not. */
            dev->dirty |= 1u << id;
        }
    }
}

static void handle_packet(sfb_device *dev, const uint8_t *pkt, size_t len) {
    if (len < 5) {
        dev->stats.rx_bad_frame++;
        return;
    }
    uint16_t crc = (uint16_t)((pkt[len - 2] << 8) | pkt[len - 1]);
    if (sfb_crc16(pkt, len - 2) != crc) {
        dev->stats.rx_bad_crc++;
        return;
    }
    dev->stats.rx_packets++;
    dev->heard_at = now(dev);
    uint8_t type = pkt[0], seq = pkt[1], ack = pkt[2];
    const uint8_t *payload = pkt + 3;
    size_t plen = len - 5;
    if (type == SFB_SYNC) {
        restart_session(dev);
        return;
    }
    if (dev->tx_seq != 0 && ack == dev->tx_seq) acknowledged(dev);
    if (seq == 0) return;
    if (seq == dev->rx_seq) {
        dev->stats.rx_duplicates++;
        send_control(dev, SFB_ACK);
        return;
    }
    uint8_t expected = dev->rx_seq == 255 ? 1 : (uint8_t)(dev->rx_seq + 1);
    if (dev->rx_seq != 0 && seq != expected) return; /* not ours to take: the host will resend */
    dev->rx_seq = seq;
    switch (type) {
    case SFB_WELCOME:
        dev->phase = PHASE_RUN;
        dev->dirty = all_registers(dev);
        break;
    case SFB_WRITE:
        if (dev->phase == PHASE_RUN) apply_writes(dev, payload, plen);
        break;
    default:
        break;
    }
    send_control(dev, SFB_ACK);
}

void sfb_input(sfb_device *dev, const uint8_t *bytes, size_t len) {
    if (!dev || !dev->config || (!bytes && len)) return;
    for (size_t i = 0; i < len; i++) {
        uint8_t b = bytes[i];
        if (b != 0) {
            if (dev->rx_len < sizeof dev->rx) {
                dev->rx[dev->rx_len++] = b;
            } else {
                dev->rx_overflow = 1;
            }
            continue;
        }
        if (dev->rx_overflow) {
            dev->stats.rx_bad_frame++;
        } else if (dev->rx_len > 0) {
            uint8_t pkt[SFB_PACKET_MAX];
            size_t n = sfb_cobs_decode(dev->rx, dev->rx_len, pkt, sizeof pkt);
            if (n == (size_t)-1) {
                dev->stats.rx_bad_frame++;
            } else {
                handle_packet(dev, pkt, n);
            }
        }
        dev->rx_len = 0;
        dev->rx_overflow = 0;
    }
}

static void send_next(sfb_device *dev) {
    uint8_t payload[SFB_PAYLOAD_MAX];
    size_t n = 0;
    const sfb_config *c = dev->config;
    switch (dev->phase) {
    case PHASE_HELLO:
        payload[n++] = SFB_VERSION;
        payload[n++] = c->count;
        n += put_name(payload + n, c->name);
        n += put_name(payload + n, c->serial);
        send_sequenced(dev, SFB_HELLO, payload, n);
        return;
    case PHASE_DESCRIBE: {
        const sfb_register *r = &c->registers[dev->described];
        payload[n++] = dev->described;
        payload[n++] = r->type;
        payload[n++] = r->access;
        n += put_name(payload + n, r->name);
        send_sequenced(dev, SFB_DESCRIBE, payload, n);
        return;
    }
    case PHASE_RUN:
        if (dev->reject_reason) {
            payload[0] = dev->reject_id;
            payload[1] = dev->reject_reason;
            dev->reject_reason = 0;
            send_sequenced(dev, SFB_REJECT, payload, 2);
            return;
        }
        for (uint8_t id = 0; id < c->count && n + 5 <= SFB_PAYLOAD_MAX; id++) {
            if (!(dev->dirty & (1u << id))) continue;
            payload[n] = id;
            put32(payload + n + 1, dev->values[id]);
            n += 5;
            dev->dirty &= ~(1u << id);
        }
        if (n) send_sequenced(dev, SFB_REPORT, payload, n);
        return;
    default:
        return;
    }
}

void sfb_poll(sfb_device *dev) {
    if (!dev || !dev->config) return;
    uint32_t t = now(dev);
    if (dev->tx_seq != 0) {
        if ((uint32_t)(t - dev->tx_at) >= SFB_RETRANSMIT_MS) {
            dev->stats.retransmits++;
            dev->tx_at = t;
            emit(dev, dev->tx, dev->tx_len);
        }
    } else {
        send_next(dev);
    }
    if ((uint32_t)(now(dev) - dev->sent_at) >= SFB_HEARTBEAT_MS) send_control(dev, SFB_HEARTBEAT);
}

int sfb_set(sfb_device *dev, uint8_t id, uint32_t raw) {
    if (!dev || !dev->config) return SFB_ESTATE;
    if (id >= dev->config->count) return SFB_EID;
    if (dev->values[id] != raw) {
        dev->values[id] = raw;
        dev->dirty |= 1u << id;
    }
    return 0;
}

uint32_t sfb_get(const sfb_device *dev, uint8_t id) { return dev && dev->config && id < dev->config->count ? dev->values[id] : 0; }

int sfb_idle(const sfb_device *dev) {
    return dev && dev->config && dev->phase == PHASE_RUN && dev->tx_seq == 0 && dev->dirty == 0 && !dev->reject_reason;
}

int sfb_online(const sfb_device *dev) { return dev && dev->config && dev->phase == PHASE_RUN; }
