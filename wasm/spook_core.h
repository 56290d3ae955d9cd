/*
 * The Spook Edge core in portable C99: canonical values and deltas, QN
 * names, the schema check, QSCS collapse (lww and device) and the canonical
 * state bytes (docs/conformance.md). No heap, no libc: all state lives in
 * fixed static tables, so the same code builds for WebAssembly (clang
 * --target=wasm32, no libc), for a host, and for a microcontroller.
 *
 * One replica per build (static state): a browser page loads one module
 * instance per replica.
 */
#ifndef SPOOK_CORE_H
#define SPOOK_CORE_H

#include <stddef.h>
#include <stdint.h>

/* Bounds. A call that would pass one returns SC_FULL and changes nothing. */
#define SC_REGISTERS_MAX 4096u
/* Names, and the canonical bytes of live values (twice: compaction copies). */
#define SC_ARENA_BYTES (2u * 1024u * 1024u)
#define SC_SCHEMA_RULES_MAX 256u
#define SC_VALUE_BYTES_MAX 65536u /* a string's or bytes' body */
#define SC_WRITES_MAX 1024u
/* The exchange buffer (sc_io): a delta or schema in, the state out. */
#define SC_IO_BYTES (1024u * 1024u)

enum sc_code {
    SC_OK = 0,
    SC_MALFORMED = 1,
    SC_INVALID_NAME = 2,
    SC_DUPLICATE_REGISTER = 3,
    SC_EMPTY_DELTA = 4,
    SC_INVALID_SEQ = 5,
    SC_VALUE_TOO_LARGE = 6,
    SC_TOO_MANY_WRITES = 7,
    SC_TYPE_MISMATCH = 8,
    SC_KIND_NOT_ALLOWED = 9,
    SC_NOT_OWNER = 10,
    SC_FULL = 11,
    SC_INVALID_PATTERN = 12,
    SC_HELD = 13, /* sc_take: that seq is held already */
    SC_GAP = 14   /* sc_take: an earlier seq of its origin is missing */
};

/* Forgets every register and the schema. */
void sc_reset(void);

/* Loads a schema (format in docs/browser.md); replaces the previous one. */
int sc_schema_load(const uint8_t *p, uint32_t n);

/* Decodes and validates one delta (canonical bytes) without applying it. */
int sc_decode(const uint8_t *p, uint32_t n);

/* Decodes, validates, checks against the schema and collapses one delta
 * (canonical bytes). SC_OK also for a delta that changes nothing. */
int sc_apply(const uint8_t *p, uint32_t n);

/* Merges one register of a snapshot: u16 name length, the full name
 * ("domain/group/register"), then its canonical register state (QSCS:
 * each side keeps the greater stamp). */
int sc_merge(const uint8_t *p, uint32_t n);

/* The replica's vector (sc_take, sc_held, sc_vector_raise, sc_vector) and
 * ETCP frames (sc_frame_check, sc_frame_seal): docs/browser.md. */
int sc_take(const uint8_t *p, uint32_t n);
uint64_t sc_held(uint64_t origin);
int sc_vector_raise(const uint8_t *p, uint32_t n);
uint32_t sc_vector(uint8_t *out, uint32_t cap);
uint32_t sc_frame_check(const uint8_t *p, uint32_t n, uint32_t bound);
uint32_t sc_frame_seal(uint8_t *out, uint32_t type, uint32_t len);

/* Writes the canonical state bytes to out; returns their length, or
 * 0xffffffff when they need more than cap bytes. */
uint32_t sc_state(uint8_t *out, uint32_t cap);

/* Decodes one canonical value and writes it again to out (an identity for
 * canonical input); returns its length, or 0xffffffff - code on a refusal. */
uint32_t sc_value_roundtrip(const uint8_t *p, uint32_t n, uint8_t *out, uint32_t cap);

/* The exchange buffer, SC_IO_BYTES long, for hosts that share memory (WebAssembly). */
uint8_t *sc_io(void);

#endif
