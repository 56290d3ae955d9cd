/* The Spook Edge core in portable C99 (spook_core.h). Every rule here is
 * the Swift core's (Sources/SpookCore), checked by the same conformance
 * vectors (Tests/Conformance/vectors, run by wasm/test). */
#include "spook_core.h"

#if defined(__wasm__)
#define SC_EXPORT(name) __attribute__((export_name(#name)))
#else
#define SC_EXPORT(name)
#endif

/* ---- bytes ---------------------------------------------------------------- */

static void copy(uint8_t *d, const uint8_t *s, uint32_t n) { while (n--) *d++ = *s++; }

/* Lexicographic order of byte strings (a proper prefix comes first). */
static int compare(const uint8_t *a, uint32_t an, const uint8_t *b, uint32_t bn) {
    uint32_t n = an < bn ? an : bn;
    for (uint32_t i = 0; i < n; i++) {
        if (a[i] != b[i]) return a[i] < b[i] ? -1 : 1;
    }
    return an == bn ? 0 : (an < bn ? -1 : 1);
}

typedef struct {
    const uint8_t *p;
    uint32_t n, at;
    int short_read;
} reader;

static const uint8_t *take(reader *r, uint32_t k) {
    if (r->short_read || r->n - r->at < k) { r->short_read = 1; return 0; }
    const uint8_t *q = r->p + r->at;
    r->at += k;
    return q;
}

static uint64_t big(reader *r, uint32_t k) {
    const uint8_t *q = take(r, k);
    uint64_t v = 0;
    if (!q) return 0;
    for (uint32_t i = 0; i < k; i++) v = v << 8 | q[i];
    return v;
}

typedef struct {
    uint8_t *p;
    uint32_t cap, at;
    int overflow;
} writer;

static void put(writer *w, const uint8_t *s, uint32_t n) {
    if (w->overflow || w->cap - w->at < n) { w->overflow = 1; return; }
    copy(w->p + w->at, s, n);
    w->at += n;
}

static void put_big(writer *w, uint64_t v, uint32_t k) {
    uint8_t b[8];
    for (uint32_t i = 0; i < k; i++) b[i] = (uint8_t)(v >> (8 * (k - 1 - i)));
    put(w, b, k);
}

/* Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF. */
static int valid_utf8(const uint8_t *s, uint32_t n) {
    uint32_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        uint32_t extra, min, cp;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xC2 && c <= 0xDF) { extra = 1; min = 0x80; cp = c & 0x1F; }
        else if (c >= 0xE0 && c <= 0xEF) { extra = 2; min = 0x800; cp = c & 0x0F; }
        else if (c >= 0xF0 && c <= 0xF4) { extra = 3; min = 0x10000; cp = c & 0x07; }
        else return 0;
        if (n - i <= extra) return 0;
        for (uint32_t k = 1; k <= extra; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += extra + 1;
    }
    return 1;
}

/* ---- QN names ------------------------------------------------------------- */

static int lower(uint8_t c) { return c >= 'a' && c <= 'z'; }
static int digit(uint8_t c) { return c >= '0' && c <= '9'; }

static int label_ok(const uint8_t *s, uint32_t n) {
    if (n == 0 || n > 63) return 0;
    for (uint32_t i = 0; i < n; i++) {
        if (lower(s[i]) || digit(s[i]) || (s[i] == '-' && i > 0)) continue;
        return 0;
    }
    return 1;
}

static int domain_ok(const uint8_t *s, uint32_t n) {
    if (n == 0 || n > 253) return 0;
    uint32_t start = 0;
    for (uint32_t i = 0; i <= n; i++) {
        if (i == n || s[i] == '.') {
            if (!label_ok(s + start, i - start)) return 0;
            start = i + 1;
        }
    }
    return 1;
}

static int group_local_ok(const uint8_t *s, uint32_t n) {
    if (n == 0 || n > 63) return 0;
    for (uint32_t i = 0; i < n; i++) {
        if (lower(s[i]) || digit(s[i]) || ((s[i] == '-' || s[i] == '_') && i > 0)) continue;
        return 0;
    }
    return 1;
}

static int register_local_ok(const uint8_t *s, uint32_t n) {
    if (n == 0 || n > 63) return 0;
    if (s[0] == '$') {
        if (n == 1) return 0;
        for (uint32_t i = 1; i < n; i++) {
            if (lower(s[i]) || (i > 1 && (digit(s[i]) || s[i] == '_'))) continue;
            return 0;
        }
        return 1;
    }
    for (uint32_t i = 0; i < n; i++) {
        uint8_t c = s[i];
        if (lower(c) || digit(c) || c == '_' || c == '.' || c == '-') continue;
        return 0;
    }
    return 1;
}

/* "domain/group": the length of the domain part, or 0 when invalid. */
static uint32_t group_ok(const uint8_t *s, uint32_t n) {
    uint32_t slash = n, slashes = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (s[i] == '/') { slashes++; slash = i; }
    }
    if (slashes != 1 || !domain_ok(s, slash) || !group_local_ok(s + slash + 1, n - slash - 1)) return 0;
    return slash;
}

/* A domain pattern: "*", "a.b" or "a.b.*" (one or more labels below a.b). */
typedef struct {
    const uint8_t *prefix;
    uint32_t len;
    int wildcard;
} pattern;

static int pattern_parse(const uint8_t *s, uint32_t n, pattern *p) {
    p->prefix = s;
    p->len = n;
    p->wildcard = 0;
    if (n == 1 && s[0] == '*') { p->len = 0; p->wildcard = 1; return 1; }
    if (n >= 2 && s[n - 2] == '.' && s[n - 1] == '*') { p->len = n - 2; p->wildcard = 1; }
    for (uint32_t i = 0; i < p->len; i++) {
        if (s[i] == '*') return 0;
    }
    return domain_ok(s, p->len);
}

static int pattern_matches(const pattern *p, const uint8_t *d, uint32_t dn) {
    if (p->len == 0) return p->wildcard;
    if (!p->wildcard) return compare(p->prefix, p->len, d, dn) == 0;
    return dn > p->len + 1 && compare(p->prefix, p->len, d, p->len) == 0 && d[p->len] == '.';
}

/* ---- values --------------------------------------------------------------- */

enum { TAG_NULL = 0, TAG_BOOL = 1, TAG_INT = 2, TAG_FLOAT = 3, TAG_STRING = 4, TAG_BYTES = 5 };

/* Reads one canonical value; on SC_OK, v and vn are its bytes within r. */
static int value_read(reader *r, const uint8_t **v, uint32_t *vn) {
    uint32_t start = r->at;
    uint8_t tag = (uint8_t)big(r, 1);
    if (r->short_read) return SC_MALFORMED;
    switch (tag) {
    case TAG_NULL: break;
    case TAG_BOOL:
        if (big(r, 1) > 1) return SC_MALFORMED;
        break;
    case TAG_INT: big(r, 8); break;
    case TAG_FLOAT: {
        uint64_t bits = big(r, 8);
        int nan = (bits & 0x7FF0000000000000ull) == 0x7FF0000000000000ull && (bits & 0x000FFFFFFFFFFFFFull) != 0;
        if (!r->short_read && nan && bits != 0x7FF8000000000000ull) return SC_MALFORMED;
        break;
    }
    case TAG_STRING:
    case TAG_BYTES: {
        uint64_t count = big(r, 4);
        if (r->short_read) return SC_MALFORMED;
        if (count > SC_VALUE_BYTES_MAX) return SC_VALUE_TOO_LARGE;
        const uint8_t *body = take(r, (uint32_t)count);
        if (body && tag == TAG_STRING && !valid_utf8(body, (uint32_t)count)) return SC_MALFORMED;
        break;
    }
    default: return SC_MALFORMED;
    }
    if (r->short_read) return SC_MALFORMED;
    *v = r->p + start;
    *vn = r->at - start;
    return SC_OK;
}

/* ---- the arena: register names and live values ----------------------------- */

static uint8_t arena[2][SC_ARENA_BYTES / 2];
static uint32_t arena_half, arena_used;

typedef struct {
    uint32_t off, len; /* canonical value bytes in the arena; len 0: absent */
    uint64_t hlc, origin, seq;
} side;

typedef struct {
    uint32_t name_off;
    uint16_t name_len;
    uint8_t device; /* 0: lww (side r), 1: device (r reported, d desired) */
    side r, d;
} reg;

static reg regs[SC_REGISTERS_MAX];
static uint32_t reg_count;

static uint32_t arena_put(const uint8_t *s, uint32_t n) {
    uint32_t off = arena_used;
    copy(arena[arena_half] + off, s, n);
    arena_used += n;
    return off;
}

static const uint8_t *at(uint32_t off) { return arena[arena_half] + off; }

/* Copies what is live into the other half: dead values' bytes are reclaimed. */
static void arena_compact(void) {
    uint32_t other = arena_half ^ 1, used = 0;
    for (uint32_t i = 0; i < reg_count; i++) {
        reg *g = &regs[i];
        copy(arena[other] + used, at(g->name_off), g->name_len);
        g->name_off = used;
        used += g->name_len;
        side *sides[2] = {&g->r, &g->d};
        for (int k = 0; k < 2; k++) {
            if (!sides[k]->len) continue;
            copy(arena[other] + used, at(sides[k]->off), sides[k]->len);
            sides[k]->off = used;
            used += sides[k]->len;
        }
    }
    arena_half = other;
    arena_used = used;
}

/* The register named name (index), or where it would go (*found = 0). */
static uint32_t find(const uint8_t *name, uint32_t n, int *found) {
    uint32_t lo = 0, hi = reg_count;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        int c = compare(at(regs[mid].name_off), regs[mid].name_len, name, n);
        if (c == 0) { *found = 1; return mid; }
        if (c < 0) lo = mid + 1; else hi = mid;
    }
    *found = 0;
    return lo;
}

/* ---- schema --------------------------------------------------------------- */

enum { ANY = 0xFF };

typedef struct {
    pattern domain;
    const uint8_t *group, *reg_name; /* 0: any */
    uint32_t group_len, reg_len;
    uint8_t type, policy;            /* type: a value tag or ANY; policy 0 lww, 1 device */
    uint64_t origin;                 /* owners only */
} rule;

static uint8_t schema_bytes[64 * 1024];
static rule rules[SC_SCHEMA_RULES_MAX], owners[SC_SCHEMA_RULES_MAX];
static uint32_t rule_count, owner_count;

static int selector_matches(const rule *s, const uint8_t *group, uint32_t domain_len, uint32_t group_len,
                            const uint8_t *reg_name, uint32_t reg_len) {
    if (!pattern_matches(&s->domain, group, domain_len)) return 0;
    const uint8_t *local = group + domain_len + 1;
    uint32_t local_len = group_len - domain_len - 1;
    if (s->group && compare(s->group, s->group_len, local, local_len) != 0) return 0;
    if (s->reg_name && reg_name && compare(s->reg_name, s->reg_len, reg_name, reg_len) != 0) return 0;
    return 1;
}

static int read_selector(reader *r, rule *s) {
    uint32_t n = (uint32_t)big(r, 1);
    const uint8_t *p = take(r, n);
    if (!p || !pattern_parse(p, n, &s->domain)) return SC_INVALID_PATTERN;
    s->group_len = (uint32_t)big(r, 1);
    s->group = s->group_len ? take(r, s->group_len) : 0;
    s->reg_len = (uint32_t)big(r, 1);
    s->reg_name = s->reg_len ? take(r, s->reg_len) : 0;
    return r->short_read ? SC_MALFORMED : SC_OK;
}

SC_EXPORT(sc_schema_load)
int sc_schema_load(const uint8_t *p, uint32_t n) {
    if (n > sizeof schema_bytes) return SC_FULL;
    copy(schema_bytes, p, n);
    reader r = {schema_bytes, n, 0, 0};
    uint32_t rc = (uint32_t)big(&r, 2), oc;
    rule_count = owner_count = 0;
    if (rc > SC_SCHEMA_RULES_MAX) return SC_FULL;
    for (uint32_t i = 0; i < rc; i++) {
        int code = read_selector(&r, &rules[i]);
        rules[i].type = (uint8_t)big(&r, 1);
        rules[i].policy = (uint8_t)big(&r, 1);
        if (code != SC_OK) return code;
        if (r.short_read || (rules[i].type > TAG_BYTES && rules[i].type != ANY) || rules[i].policy > 1) return SC_MALFORMED;
    }
    oc = (uint32_t)big(&r, 2);
    if (oc > SC_SCHEMA_RULES_MAX) return SC_FULL;
    for (uint32_t i = 0; i < oc; i++) {
        int code = read_selector(&r, &owners[i]);
        owners[i].origin = big(&r, 8);
        if (code != SC_OK) return code;
    }
    if (r.short_read || r.at != n) return SC_MALFORMED;
    rule_count = rc;
    owner_count = oc;
    return SC_OK;
}

/* The declared type and policy of a register (system registers have fixed types). */
static void spec_for(const uint8_t *group, uint32_t domain_len, uint32_t group_len, const uint8_t *name, uint32_t n,
                     uint8_t *type, uint8_t *policy) {
    *type = ANY;
    *policy = 0;
    if (name[0] == '$') {
        static const struct { const char *name; uint8_t type; } fixed[] = {
            {"$online", TAG_BOOL}, {"$state", TAG_STRING}, {"$error", TAG_STRING}, {"$lag", TAG_INT}};
        for (uint32_t i = 0; i < 4; i++) {
            uint32_t len = 0;
            while (fixed[i].name[len]) len++;
            if (compare((const uint8_t *)fixed[i].name, len, name, n) == 0) *type = fixed[i].type;
        }
        return;
    }
    for (uint32_t i = 0; i < rule_count; i++) {
        if (selector_matches(&rules[i], group, domain_len, group_len, name, n)) {
            *type = rules[i].type;
            *policy = rules[i].policy;
            return;
        }
    }
}

/* ---- deltas and collapse -------------------------------------------------- */

enum { KIND_SET = 0, KIND_REPORT = 1, KIND_DESIRE = 2 };

typedef struct {
    const uint8_t *name, *value;
    uint32_t name_len, value_len;
    uint8_t kind;
} write_t;

static write_t writes[SC_WRITES_MAX];

static int stamp_compare(const side *a, uint64_t hlc, uint64_t origin, uint64_t seq) {
    if (a->hlc != hlc) return a->hlc < hlc ? -1 : 1;
    if (a->origin != origin) return a->origin < origin ? -1 : 1;
    if (a->seq != seq) return a->seq < seq ? -1 : 1;
    return 0;
}

/* Does the incoming write beat what the side holds? Greater stamp; on a tie
 * (a faulty origin), the greater canonical value bytes. */
static int beats(const side *s, const write_t *w, uint64_t hlc, uint64_t origin, uint64_t seq) {
    if (!s->len) return 1;
    int c = stamp_compare(s, hlc, origin, seq);
    if (c != 0) return c < 0;
    return compare(at(s->off), s->len, w->value, w->value_len) < 0;
}

static uint8_t full_name[256 + 64 + 2];

/* The delta being decoded and applied. */
static uint64_t origin, seq, hlc;
static const uint8_t *group;
static uint32_t group_len, domain_len, count;

/* Decodes a delta into the variables above, with every check building a
 * delta makes, in the Swift core's order. */
static int decode(const uint8_t *p, uint32_t n) {
    reader r = {p, n, 0, 0};
    origin = big(&r, 8);
    seq = big(&r, 8);
    hlc = big(&r, 8);
    group_len = (uint32_t)big(&r, 2);
    group = take(&r, group_len);
    if (r.short_read) return SC_MALFORMED;
    if (!valid_utf8(group, group_len)) return SC_MALFORMED;
    domain_len = group_ok(group, group_len);
    if (!domain_len) return SC_INVALID_NAME;
    count = (uint32_t)big(&r, 2);
    if (r.short_read) return SC_MALFORMED;
    if (count > SC_WRITES_MAX) return SC_TOO_MANY_WRITES;
    for (uint32_t i = 0; i < count; i++) {
        write_t *w = &writes[i];
        w->name_len = (uint32_t)big(&r, 1);
        w->name = take(&r, w->name_len);
        if (r.short_read) return SC_MALFORMED;
        if (!valid_utf8(w->name, w->name_len)) return SC_MALFORMED;
        uint64_t kind = big(&r, 1);
        if (r.short_read || kind > KIND_DESIRE) return SC_MALFORMED;
        w->kind = (uint8_t)kind;
        int code = value_read(&r, &w->value, &w->value_len);
        if (code != SC_OK) return code;
    }
    if (r.at != n) return SC_MALFORMED;
    /* What building a delta checks, in the Swift core's order. */
    if (seq < 1) return SC_INVALID_SEQ;
    if (count == 0) return SC_EMPTY_DELTA;
    for (uint32_t i = 0; i < count; i++) {
        if (!register_local_ok(writes[i].name, writes[i].name_len)) return SC_INVALID_NAME;
        for (uint32_t k = 0; k < i; k++) {
            if (compare(writes[k].name, writes[k].name_len, writes[i].name, writes[i].name_len) == 0) return SC_DUPLICATE_REGISTER;
        }
    }
    return SC_OK;
}

SC_EXPORT(sc_decode)
int sc_decode(const uint8_t *p, uint32_t n) { return decode(p, n); }

SC_EXPORT(sc_apply)
int sc_apply(const uint8_t *p, uint32_t n) {
    int decoded = decode(p, n);
    if (decoded != SC_OK) return decoded;
    /* The schema: one refused write refuses the whole delta. */
    const uint64_t *owner = 0;
    for (uint32_t i = 0; i < owner_count && !owner; i++) {
        if (selector_matches(&owners[i], group, domain_len, group_len, 0, 0)) owner = &owners[i].origin;
    }
    uint32_t bytes_needed = 0, new_registers = 0;
    for (uint32_t i = 0; i < count; i++) {
        const write_t *w = &writes[i];
        uint8_t type, policy;
        spec_for(group, domain_len, group_len, w->name, w->name_len, &type, &policy);
        if (policy == 0 ? w->kind != KIND_SET : w->kind == KIND_SET) return SC_KIND_NOT_ALLOWED;
        if (type != ANY && w->value[0] != TAG_NULL && w->value[0] != type) return SC_TYPE_MISMATCH;
        if (w->kind == KIND_REPORT && owner && *owner != origin) return SC_NOT_OWNER;
        bytes_needed += group_len + 1 + w->name_len + w->value_len;
    }
    /* Room, before anything changes (the delta is applied whole or not at all). */
    for (uint32_t i = 0; i < count; i++) {
        int found;
        uint32_t len = group_len + 1 + writes[i].name_len;
        copy(full_name, group, group_len);
        full_name[group_len] = '/';
        copy(full_name + group_len + 1, writes[i].name, writes[i].name_len);
        find(full_name, len, &found);
        new_registers += !found;
    }
    if (reg_count + new_registers > SC_REGISTERS_MAX) return SC_FULL;
    if (arena_used + bytes_needed > SC_ARENA_BYTES / 2) arena_compact();
    if (arena_used + bytes_needed > SC_ARENA_BYTES / 2) return SC_FULL;
    /* QSCS, write by write. */
    for (uint32_t i = 0; i < count; i++) {
        const write_t *w = &writes[i];
        int found;
        uint32_t len = group_len + 1 + w->name_len;
        copy(full_name, group, group_len);
        full_name[group_len] = '/';
        copy(full_name + group_len + 1, w->name, w->name_len);
        uint32_t k = find(full_name, len, &found);
        if (!found) {
            for (uint32_t j = reg_count; j > k; j--) regs[j] = regs[j - 1];
            reg_count++;
            reg *g = &regs[k];
            g->name_off = arena_put(full_name, len);
            g->name_len = (uint16_t)len;
            g->device = w->kind != KIND_SET;
            g->r.len = g->d.len = 0;
        }
        reg *g = &regs[k];
        side *s;
        if (!g->device && w->kind == KIND_SET) s = &g->r;
        else if (g->device && w->kind == KIND_REPORT) s = &g->r;
        else if (g->device && w->kind == KIND_DESIRE) s = &g->d;
        else continue; /* a policy changed under existing state: the schema refuses such writes */
        if (!beats(s, w, hlc, origin, seq)) continue;
        s->off = arena_put(w->value, w->value_len);
        s->len = w->value_len;
        s->hlc = hlc;
        s->origin = origin;
        s->seq = seq;
    }
    return SC_OK;
}

/* ---- snapshots: one register's state merged in --------------------------- */

/* Reads a value and its stamp (a register state's side). */
static int side_read(reader *r, const uint8_t **v, uint32_t *vn, uint64_t *hlc, uint64_t *origin, uint64_t *seq) {
    int code = value_read(r, v, vn);
    if (code != SC_OK) return code;
    *hlc = big(r, 8);
    *origin = big(r, 8);
    *seq = big(r, 8);
    return r->short_read ? SC_MALFORMED : SC_OK;
}

/* Merges one side of a snapshot into s when it beats what s holds. */
static void merge_side(side *s, const uint8_t *v, uint32_t vn, uint64_t hlc, uint64_t origin, uint64_t seq) {
    write_t w = {0, v, 0, vn, 0};
    if (!beats(s, &w, hlc, origin, seq)) return;
    s->off = arena_put(v, vn);
    s->len = vn;
    s->hlc = hlc;
    s->origin = origin;
    s->seq = seq;
}

SC_EXPORT(sc_merge)
int sc_merge(const uint8_t *p, uint32_t n) {
    reader r = {p, n, 0, 0};
    uint32_t name_len = (uint32_t)big(&r, 2);
    const uint8_t *name = take(&r, name_len);
    if (r.short_read || !valid_utf8(name, name_len)) return SC_MALFORMED;
    uint32_t slash = name_len;
    for (uint32_t i = 0; i < name_len; i++) if (name[i] == '/') slash = i;
    if (slash == name_len || !group_ok(name, slash) || !register_local_ok(name + slash + 1, name_len - slash - 1)) return SC_INVALID_NAME;
    uint8_t tag = (uint8_t)big(&r, 1), flags = 1;
    if (r.short_read || tag > 1) return SC_MALFORMED;
    if (tag == 1) {
        flags = (uint8_t)big(&r, 1);
        if (r.short_read || (flags & ~3) != 0) return SC_MALFORMED;
    }
    const uint8_t *v[2] = {0, 0};
    uint32_t vn[2] = {0, 0};
    uint64_t hlc[2], origin[2], seq[2];
    for (int k = 0; k < 2; k++) {
        if (!(flags & (1 << k))) continue;
        int code = side_read(&r, &v[k], &vn[k], &hlc[k], &origin[k], &seq[k]);
        if (code != SC_OK) return code;
    }
    if (r.at != n) return SC_MALFORMED;
    int found;
    uint32_t k = find(name, name_len, &found);
    if (!found && reg_count >= SC_REGISTERS_MAX) return SC_FULL;
    if (arena_used + name_len + vn[0] + vn[1] > SC_ARENA_BYTES / 2) arena_compact();
    if (arena_used + name_len + vn[0] + vn[1] > SC_ARENA_BYTES / 2) return SC_FULL;
    if (!found) {
        for (uint32_t j = reg_count; j > k; j--) regs[j] = regs[j - 1];
        reg_count++;
        regs[k].name_off = arena_put(name, name_len);
        regs[k].name_len = (uint16_t)name_len;
        regs[k].device = tag;
        regs[k].r.len = regs[k].d.len = 0;
    }
    reg *g = &regs[k];
    if (g->device != tag) return SC_OK; /* lww against device: the snapshot changes nothing (QSCS) */
    if (flags & 1) merge_side(&g->r, v[0], vn[0], hlc[0], origin[0], seq[0]);
    if (flags & 2) merge_side(&g->d, v[1], vn[1], hlc[1], origin[1], seq[1]);
    return SC_OK;
}

/* ---- the replica's vector: what it holds of each origin ------------------ */

#define SC_ORIGINS_MAX 1024u
static uint64_t held_origin[SC_ORIGINS_MAX], held_seq[SC_ORIGINS_MAX];
static uint32_t held_count;

/* The index of origin in the (ascending) table, or where it would go. */
static uint32_t held_find(uint64_t origin, int *found) {
    uint32_t lo = 0, hi = held_count;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (held_origin[mid] == origin) { *found = 1; return mid; }
        if (held_origin[mid] < origin) lo = mid + 1; else hi = mid;
    }
    *found = 0;
    return lo;
}

static uint64_t held_get(uint64_t origin) {
    int found;
    uint32_t i = held_find(origin, &found);
    return found ? held_seq[i] : 0;
}

static int held_set(uint64_t origin, uint64_t seq) {
    int found;
    uint32_t i = held_find(origin, &found);
    if (!found) {
        if (held_count >= SC_ORIGINS_MAX) return SC_FULL;
        for (uint32_t j = held_count; j > i; j--) { held_origin[j] = held_origin[j - 1]; held_seq[j] = held_seq[j - 1]; }
        held_count++;
        held_origin[i] = origin;
        held_seq[i] = 0;
    }
    if (seq > held_seq[i]) held_seq[i] = seq;
    return SC_OK;
}

/* Takes a delta in its origin's order: SC_HELD when its seq is held
 * already, SC_GAP when an earlier seq is missing (the caller keeps it for
 * later), else the delta is applied (or refused by the schema: its seq is
 * held all the same) and the vector moves on; the code of the apply. */
SC_EXPORT(sc_take)
int sc_take(const uint8_t *p, uint32_t n) {
    if (n < 16) return SC_MALFORMED;
    reader r = {p, n, 0, 0};
    uint64_t o = big(&r, 8), s = big(&r, 8), have = held_get(o);
    if (s <= have) return SC_HELD;
    if (s > have + 1) return SC_GAP;
    int code = sc_apply(p, n);
    if (code == SC_MALFORMED || code == SC_FULL || (code >= SC_INVALID_NAME && code <= SC_TOO_MANY_WRITES)) return code;
    int room = held_set(o, s);
    return room != SC_OK ? room : code;
}

/* What the replica holds of `origin` (for its own next seq). */
SC_EXPORT(sc_held)
uint64_t sc_held(uint64_t origin) { return held_get(origin); }

/* Raises the vector to cover a QStateVector (a snapshot's): u32 count, then (u64 origin, u64 seq). */
SC_EXPORT(sc_vector_raise)
int sc_vector_raise(const uint8_t *p, uint32_t n) {
    reader r = {p, n, 0, 0};
    uint32_t count = (uint32_t)big(&r, 4);
    if (r.short_read || n != 4 + 16 * (uint64_t)count) return SC_MALFORMED;
    for (uint32_t i = 0; i < count; i++) {
        uint64_t o = big(&r, 8), s = big(&r, 8);
        int code = held_set(o, s);
        if (code != SC_OK) return code;
    }
    return SC_OK;
}

/* The replica's QStateVector: u32 count, then (u64 origin, u64 seq) ascending, zeros left out. */
SC_EXPORT(sc_vector)
uint32_t sc_vector(uint8_t *out, uint32_t cap) {
    writer w = {out, cap, 0, 0};
    uint32_t nonzero = 0;
    for (uint32_t i = 0; i < held_count; i++) nonzero += held_seq[i] != 0;
    put_big(&w, nonzero, 4);
    for (uint32_t i = 0; i < held_count; i++) {
        if (!held_seq[i]) continue;
        put_big(&w, held_origin[i], 8);
        put_big(&w, held_seq[i], 8);
    }
    return w.overflow ? 0xFFFFFFFFu : w.at;
}

/* ---- ETCP frames -------------------------------------------------------------- */

static uint32_t crc32c(const uint8_t *p, uint32_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (uint32_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = c & 1 ? 0x82F63B78u ^ (c >> 1) : c >> 1;
    }
    return c ^ 0xFFFFFFFFu;
}

/* Checks one whole frame (magic, version, length against `bound`, exact
 * size, CRC-32C, type 1 … 9): its type, or 0x100 + the protocol's error
 * code (1 bad-magic, 2 unsupported-version, 3 frame-too-large,
 * 4 bad-checksum, 5 unknown-type, 6 malformed). The payload is at +8. */
SC_EXPORT(sc_frame_check)
uint32_t sc_frame_check(const uint8_t *p, uint32_t n, uint32_t bound) {
    if (n < 2 || p[0] != 'S' || p[1] != 'P') return 0x100 + 1;
    if (n < 3 || p[2] != 1) return 0x100 + 2;
    if (n < 8) return 0x100 + 6;
    reader r = {p + 4, 4, 0, 0};
    uint32_t len = (uint32_t)big(&r, 4);
    if (len > bound) return 0x100 + 3;
    if ((uint64_t)n != 12 + (uint64_t)len) return 0x100 + 6;
    reader c = {p + 8 + len, 4, 0, 0};
    if ((uint32_t)big(&c, 4) != crc32c(p + 2, 6 + len)) return 0x100 + 4;
    if (p[3] < 1 || p[3] > 9) return 0x100 + 5;
    return p[3];
}

/* Writes a frame of `type` around the payload already at out + 8 (len
 * bytes): the header before it, the CRC-32C after; the frame's length. */
SC_EXPORT(sc_frame_seal)
uint32_t sc_frame_seal(uint8_t *out, uint32_t type, uint32_t len) {
    writer w = {out, 8, 0, 0};
    uint8_t head[4] = {'S', 'P', 1, (uint8_t)type};
    put(&w, head, 4);
    put_big(&w, len, 4);
    writer t = {out + 8 + len, 4, 0, 0};
    put_big(&t, crc32c(out + 2, 6 + len), 4);
    return 12 + len;
}

/* ---- the state ------------------------------------------------------------ */

static void put_side(writer *w, const side *s) {
    put(w, at(s->off), s->len);
    put_big(w, s->hlc, 8);
    put_big(w, s->origin, 8);
    put_big(w, s->seq, 8);
}

SC_EXPORT(sc_state)
uint32_t sc_state(uint8_t *out, uint32_t cap) {
    writer w = {out, cap, 0, 0};
    put_big(&w, reg_count, 4);
    for (uint32_t i = 0; i < reg_count; i++) {
        const reg *g = &regs[i];
        put_big(&w, g->name_len, 2);
        put(&w, at(g->name_off), g->name_len);
        if (!g->device) {
            uint8_t tag = 0;
            put(&w, &tag, 1);
            put_side(&w, &g->r);
        } else {
            uint8_t head[2] = {1, (uint8_t)((g->r.len ? 1 : 0) | (g->d.len ? 2 : 0))};
            put(&w, head, 2);
            if (g->r.len) put_side(&w, &g->r);
            if (g->d.len) put_side(&w, &g->d);
        }
    }
    return w.overflow ? 0xFFFFFFFFu : w.at;
}

SC_EXPORT(sc_value_roundtrip)
uint32_t sc_value_roundtrip(const uint8_t *p, uint32_t n, uint8_t *out, uint32_t cap) {
    reader r = {p, n, 0, 0};
    const uint8_t *v;
    uint32_t vn;
    int code = value_read(&r, &v, &vn);
    if (code == SC_OK && r.at != n) code = SC_MALFORMED;
    if (code != SC_OK) return 0xFFFFFFFFu - (uint32_t)code;
    if (vn > cap) return 0xFFFFFFFFu - SC_FULL;
    copy(out, v, vn);
    return vn;
}

SC_EXPORT(sc_reset)
void sc_reset(void) {
    reg_count = 0;
    held_count = 0;
    arena_used = 0;
    rule_count = owner_count = 0;
}

static uint8_t io[SC_IO_BYTES];

SC_EXPORT(sc_io)
uint8_t *sc_io(void) { return io; }
