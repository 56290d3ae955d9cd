/* spook.c: see spook.h. C99 and POSIX sockets; no allocation beyond the handle. */
#define _POSIX_C_SOURCE 200809L
#include "spook.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

struct spook {
    int fd;
    char pending[8192]; /* bytes read past the last answer's newline */
    size_t pending_len;
};

spook *spook_open(const char *socket_path) {
    struct sockaddr_un address;
    if (strlen(socket_path) >= sizeof address.sun_path) { errno = ENAMETOOLONG; return NULL; }
    memset(&address, 0, sizeof address);
    address.sun_family = AF_UNIX;
    strcpy(address.sun_path, socket_path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0) return NULL;
    if (connect(fd, (struct sockaddr *)&address, sizeof address) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return NULL;
    }
    spook *s = calloc(1, sizeof *s);
    if (!s) { close(fd); return NULL; }
    s->fd = fd;
    return s;
}

void spook_close(spook *s) {
    if (!s) return;
    close(s->fd);
    free(s);
}

static int send_all(int fd, const char *bytes, size_t n) {
    while (n > 0) {
        ssize_t w = send(fd, bytes, n, MSG_NOSIGNAL);
        if (w < 0) { if (errno == EINTR) continue; return SPOOK_EIO; }
        bytes += w;
        n -= (size_t)w;
    }
    return SPOOK_OK;
}

int spook_call(spook *s, const char *request, char *answer, size_t size) {
    if (size == 0) return SPOOK_ETOOBIG;
    if (send_all(s->fd, request, strlen(request)) != SPOOK_OK || send_all(s->fd, "\n", 1) != SPOOK_OK) return SPOOK_EIO;
    size_t len = 0;
    for (;;) {
        /* A whole line in what was read already? */
        char *nl = memchr(s->pending, '\n', s->pending_len);
        if (nl) {
            size_t line = (size_t)(nl - s->pending);
            if (len + line + 1 > size) return SPOOK_ETOOBIG;
            memcpy(answer + len, s->pending, line);
            len += line;
            answer[len] = '\0';
            s->pending_len -= line + 1;
            memmove(s->pending, nl + 1, s->pending_len);
            break;
        }
        if (len + s->pending_len + 1 > size) return SPOOK_ETOOBIG;
        memcpy(answer + len, s->pending, s->pending_len);
        len += s->pending_len;
        s->pending_len = 0;
        ssize_t r = recv(s->fd, s->pending, sizeof s->pending, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) { if (r == 0) errno = ECONNRESET; return SPOOK_EIO; }
        s->pending_len = (size_t)r;
    }
    return strstr(answer, "\"ok\":true") ? SPOOK_OK : SPOOK_REFUSED;
}

/* `text` as a JSON string (quotes included) into out; -1 if it does not fit. */
static int quote(const char *text, char *out, size_t size) {
    size_t n = 0;
    if (size < 3) return -1;
    out[n++] = '"';
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        char esc[7];
        size_t k;
        if (*p == '"' || *p == '\\') { esc[0] = '\\'; esc[1] = (char)*p; k = 2; }
        else if (*p < 0x20) { snprintf(esc, sizeof esc, "\\u%04x", *p); k = 6; }
        else { esc[0] = (char)*p; k = 1; }
        if (n + k + 2 > size) return -1;
        memcpy(out + n, esc, k);
        n += k;
    }
    out[n++] = '"';
    out[n] = '\0';
    return 0;
}

/* {"op":"set","register":REG,"value":VALUE} with VALUE already JSON. */
static int set_json(spook *s, const char *reg, const char *value, char *answer, size_t size) {
    char name[1024], request[8192];
    if (quote(reg, name, sizeof name) != 0) return SPOOK_ETOOBIG;
    int n = snprintf(request, sizeof request, "{\"op\":\"set\",\"register\":%s,\"value\":%s}", name, value);
    if (n < 0 || (size_t)n >= sizeof request) return SPOOK_ETOOBIG;
    return spook_call(s, request, answer, size);
}

int spook_get(spook *s, const char *reg, char *answer, size_t size) {
    char name[1024], request[1200];
    if (quote(reg, name, sizeof name) != 0) return SPOOK_ETOOBIG;
    snprintf(request, sizeof request, "{\"op\":\"get\",\"register\":%s}", name);
    return spook_call(s, request, answer, size);
}

int spook_set_int(spook *s, const char *reg, long long value, char *answer, size_t size) {
    char v[32];
    snprintf(v, sizeof v, "%lld", value);
    return set_json(s, reg, v, answer, size);
}

int spook_set_double(spook *s, const char *reg, double value, char *answer, size_t size) {
    char v[64];
    if (isnan(value)) snprintf(v, sizeof v, "{\"float\":\"nan\"}");
    else if (isinf(value)) snprintf(v, sizeof v, "{\"float\":\"%s\"}", value > 0 ? "inf" : "-inf");
    else snprintf(v, sizeof v, "{\"float\":%.17g}", value);
    return set_json(s, reg, v, answer, size);
}

int spook_set_bool(spook *s, const char *reg, int value, char *answer, size_t size) {
    return set_json(s, reg, value ? "true" : "false", answer, size);
}

int spook_set_string(spook *s, const char *reg, const char *value, char *answer, size_t size) {
    char v[6144];
    if (quote(value, v, sizeof v) != 0) return SPOOK_ETOOBIG;
    return set_json(s, reg, v, answer, size);
}

int spook_field(const char *answer, const char *key, char *out, size_t size) {
    char pattern[128];
    snprintf(pattern, sizeof pattern, "\"%s\":\"", key);
    const char *p = strstr(answer, pattern);
    if (!p || size == 0) return -1;
    p += strlen(pattern);
    size_t n = 0;
    while (*p && *p != '"' && n + 1 < size) {
        if (*p == '\\' && p[1]) p++;
        out[n++] = *p++;
    }
    out[n] = '\0';
    return 0;
}
