/* spook.h: a thin C client for the Spook Edge local API (JSON lines over
 * the node's Unix socket; docs/api.md). No synchronisation logic: the node
 * does that. One request at a time per connection; not thread-safe.
 *
 *   spook *s = spook_open("/run/spook-edge/edge.sock");
 *   char answer[4096];
 *   if (spook_set_int(s, "site1.line3/pump7/speed", 1500, answer, sizeof answer) != SPOOK_OK)
 *       fprintf(stderr, "%s\n", answer);        // {"ok":false,"error":"…","code":"…"}
 *   spook_close(s);
 */
#ifndef SPOOK_H
#define SPOOK_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct spook spook;

enum {
    SPOOK_OK = 0,       /* "ok": true; the answer is in the buffer */
    SPOOK_REFUSED = 1,  /* "ok": false; the answer (with "error" and "code") is in the buffer */
    SPOOK_EIO = -1,     /* the socket failed or closed; errno says why */
    SPOOK_ETOOBIG = -2  /* the answer (or request) did not fit the buffer */
};

/* Connects to a node's API socket; NULL with errno set on failure. */
spook *spook_open(const char *socket_path);
void spook_close(spook *s);

/* Sends `request` (one JSON object, no newline) and reads its answer,
 * NUL-terminated, into `answer`. */
int spook_call(spook *s, const char *request, char *answer, size_t size);

/* get: the answer holds {"ok":true,"register":{…}}. */
int spook_get(spook *s, const char *reg, char *answer, size_t size);
/* set: returns once the write is durable on the node. */
int spook_set_int(spook *s, const char *reg, long long value, char *answer, size_t size);
int spook_set_double(spook *s, const char *reg, double value, char *answer, size_t size);
int spook_set_bool(spook *s, const char *reg, int value, char *answer, size_t size);
int spook_set_string(spook *s, const char *reg, const char *value, char *answer, size_t size);

/* Copies the string field `key` of a flat answer ("error", "code", "origin")
 * into `out`; 0 if found, -1 if not. */
int spook_field(const char *answer, const char *key, char *out, size_t size);

#ifdef __cplusplus
}
#endif
#endif
