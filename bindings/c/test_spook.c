/* The C binding against a real node: test_spook SOCKET. Exits 0 when every
 * check passed; prints one line per failure and a summary. */
#include "spook.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static int checks, failures;

#define CHECK(cond, ...)                                                  \
    do {                                                                  \
        checks++;                                                         \
        if (!(cond)) {                                                    \
            failures++;                                                   \
            printf("FAILED %s:%d: ", __FILE__, __LINE__);                 \
            printf(__VA_ARGS__);                                          \
            printf("\n");                                                 \
        }                                                                 \
    } while (0)

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: test_spook SOCKET\n");
        return 64;
    }
    spook *s = spook_open(argv[1]);
    if (!s) {
        printf("FAILED: cannot connect to %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    char answer[4096], field[256];

    CHECK(spook_set_int(s, "site1.c/m/speed", 1500, answer, sizeof answer) == SPOOK_OK, "set int: %s", answer);
    CHECK(spook_field(answer, "origin", field, sizeof field) == 0 && strlen(field) == 16, "origin in %s", answer);
    CHECK(spook_get(s, "site1.c/m/speed", answer, sizeof answer) == SPOOK_OK && strstr(answer, "\"value\":1500"), "get int: %s", answer);

    CHECK(spook_set_double(s, "site1.c/m/temp", 21.5, answer, sizeof answer) == SPOOK_OK, "set double: %s", answer);
    CHECK(spook_get(s, "site1.c/m/temp", answer, sizeof answer) == SPOOK_OK && strstr(answer, "{\"float\":21.5}"), "get double: %s", answer);

    CHECK(spook_set_bool(s, "site1.c/m/run", 1, answer, sizeof answer) == SPOOK_OK, "set bool: %s", answer);
    CHECK(spook_get(s, "site1.c/m/run", answer, sizeof answer) == SPOOK_OK && strstr(answer, "\"value\":true"), "get bool: %s", answer);

    /* Quotes, backslashes and control characters survive the round trip. */
    CHECK(spook_set_string(s, "site1.c/m/label", "say \"hi\"\\\n", answer, sizeof answer) == SPOOK_OK, "set string: %s", answer);
    CHECK(spook_get(s, "site1.c/m/label", answer, sizeof answer) == SPOOK_OK && strstr(answer, "\"value\":\"say \\\"hi\\\"\\\\\\n\""),
          "get string: %s", answer);

    /* Refusals carry the API's code; the connection serves on. */
    CHECK(spook_get(s, "site1.c/nobody/wrote", answer, sizeof answer) == SPOOK_REFUSED, "get unknown: %s", answer);
    CHECK(spook_field(answer, "code", field, sizeof field) == 0 && strcmp(field, "not-found") == 0, "code: %s", answer);
    CHECK(spook_set_int(s, "site1.c/m/$state", 1, answer, sizeof answer) == SPOOK_REFUSED, "set $: %s", answer);
    CHECK(spook_field(answer, "code", field, sizeof field) == 0 && strcmp(field, "refused") == 0, "code: %s", answer);
    CHECK(spook_call(s, "{\"op\":\"nonsense\"}", answer, sizeof answer) == SPOOK_REFUSED, "bad op: %s", answer);
    CHECK(spook_field(answer, "code", field, sizeof field) == 0 && strcmp(field, "bad-request") == 0, "code: %s", answer);

    /* An answer larger than the buffer is reported, not truncated silently. */
    char tiny[8];
    CHECK(spook_get(s, "site1.c/m/speed", tiny, sizeof tiny) == SPOOK_ETOOBIG, "a small buffer");
    spook_close(s);

    printf("c binding: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
