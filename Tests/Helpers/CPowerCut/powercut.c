#include "powercut.h"

#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

/* One write not yet synced: where, what it replaced, and the file size before. */
typedef struct undo {
    sqlite3_int64 offset;
    int length;          /* bytes of `old` that existed before the write */
    unsigned char *old;
    struct undo *next;   /* newer first */
} undo;

typedef struct pc_file {
    sqlite3_file base;          /* must be first */
    sqlite3_file *real;         /* the wrapped file, allocated after this struct */
    sqlite3_int64 synced_size;  /* size at the last sync (or open) */
    undo *pending;
    struct pc_file *next_open;
} pc_file;

static sqlite3_vfs *real_vfs;
static sqlite3_vfs vfs;
static pc_file *open_files;
static long countdown = -1;
static long ops_seen;
static int cut;
static long subjournals;
static long syncs;

static void forget(pc_file *f) {
    while (f->pending) {
        undo *u = f->pending;
        f->pending = u->next;
        free(u->old);
        free(u);
    }
}

/* The cut: every file loses what it was not told to keep. */
static void cut_power(void) {
    cut = 1;
    for (pc_file *f = open_files; f; f = f->next_open) {
        for (undo *u = f->pending; u; u = u->next) {
            if (u->length > 0) f->real->pMethods->xWrite(f->real, u->old, u->length, u->offset);
        }
        f->real->pMethods->xTruncate(f->real, f->synced_size);
        forget(f);
    }
}

/* Counts one operation; 1 if the power is (now) off and the caller must fail. */
static int tick(void) {
    if (cut) return 1;
    ops_seen++;
    if (countdown > 0 && --countdown == 0) {
        cut_power();
        return 1;
    }
    return 0;
}

static int pc_close(sqlite3_file *file) {
    pc_file *f = (pc_file *)file;
    pc_file **p = &open_files;
    while (*p && *p != f) p = &(*p)->next_open;
    if (*p) *p = f->next_open;
    forget(f);
    return f->real->pMethods->xClose(f->real);
}

static int pc_read(sqlite3_file *file, void *buf, int amt, sqlite3_int64 off) {
    pc_file *f = (pc_file *)file;
    if (cut) return SQLITE_IOERR_READ;
    return f->real->pMethods->xRead(f->real, buf, amt, off);
}

static int pc_write(sqlite3_file *file, const void *buf, int amt, sqlite3_int64 off) {
    pc_file *f = (pc_file *)file;
    if (tick()) return SQLITE_IOERR_WRITE;
    sqlite3_int64 size = 0;
    f->real->pMethods->xFileSize(f->real, &size);
    undo *u = calloc(1, sizeof *u);
    if (!u) return SQLITE_IOERR_NOMEM;
    u->offset = off;
    u->length = off >= size ? 0 : (int)(size - off < amt ? size - off : amt);
    if (u->length > 0) {
        u->old = malloc((size_t)u->length);
        if (!u->old) { free(u); return SQLITE_IOERR_NOMEM; }
        int rc = f->real->pMethods->xRead(f->real, u->old, u->length, off);
        if (rc != SQLITE_OK) { free(u->old); free(u); return rc; }
    }
    u->next = f->pending;
    f->pending = u;
    return f->real->pMethods->xWrite(f->real, buf, amt, off);
}

static int pc_truncate(sqlite3_file *file, sqlite3_int64 size) {
    pc_file *f = (pc_file *)file;
    if (tick()) return SQLITE_IOERR_TRUNCATE;
    sqlite3_int64 current = 0;
    f->real->pMethods->xFileSize(f->real, &current);
    if (size < current) {
        /* Keep the tail being cut off, as an unsynced write to undo. */
        undo *u = calloc(1, sizeof *u);
        if (!u) return SQLITE_IOERR_NOMEM;
        u->offset = size;
        u->length = (int)(current - size);
        u->old = malloc((size_t)u->length);
        if (!u->old) { free(u); return SQLITE_IOERR_NOMEM; }
        f->real->pMethods->xRead(f->real, u->old, u->length, size);
        u->next = f->pending;
        f->pending = u;
    }
    return f->real->pMethods->xTruncate(f->real, size);
}

static int pc_sync(sqlite3_file *file, int flags) {
    pc_file *f = (pc_file *)file;
    (void)flags;
    if (tick()) return SQLITE_IOERR_FSYNC;
    syncs++;
    /* The simulation decides what survives: a sync makes the writes so far
     * permanent; the real fsync is not needed (and would only slow the test). */
    forget(f);
    f->real->pMethods->xFileSize(f->real, &f->synced_size);
    return SQLITE_OK;
}

static int pc_size(sqlite3_file *file, sqlite3_int64 *size) {
    pc_file *f = (pc_file *)file;
    if (cut) return SQLITE_IOERR_FSTAT;
    return f->real->pMethods->xFileSize(f->real, size);
}

/* Locks, shared memory and the rest pass straight through. */
#define PASS(f) (((pc_file *)(f))->real)
static int pc_lock(sqlite3_file *f, int l) { return PASS(f)->pMethods->xLock(PASS(f), l); }
static int pc_unlock(sqlite3_file *f, int l) { return PASS(f)->pMethods->xUnlock(PASS(f), l); }
static int pc_check(sqlite3_file *f, int *r) { return PASS(f)->pMethods->xCheckReservedLock(PASS(f), r); }
static int pc_control(sqlite3_file *f, int op, void *arg) { return PASS(f)->pMethods->xFileControl(PASS(f), op, arg); }
static int pc_sector(sqlite3_file *f) { return PASS(f)->pMethods->xSectorSize(PASS(f)); }
static int pc_device(sqlite3_file *f) {
    /* No atomic or safe-append promises: SQLite must rely on syncs alone. */
    return PASS(f)->pMethods->xDeviceCharacteristics(PASS(f)) & ~(SQLITE_IOCAP_ATOMIC | SQLITE_IOCAP_SAFE_APPEND | SQLITE_IOCAP_SEQUENTIAL |
                                                               SQLITE_IOCAP_POWERSAFE_OVERWRITE);
}
static int pc_shm_map(sqlite3_file *f, int pg, int sz, int extend, void volatile **p) { return PASS(f)->pMethods->xShmMap(PASS(f), pg, sz, extend, p); }
static int pc_shm_lock(sqlite3_file *f, int off, int n, int flags) { return PASS(f)->pMethods->xShmLock(PASS(f), off, n, flags); }
static void pc_shm_barrier(sqlite3_file *f) { PASS(f)->pMethods->xShmBarrier(PASS(f)); }
static int pc_shm_unmap(sqlite3_file *f, int del) { return PASS(f)->pMethods->xShmUnmap(PASS(f), del); }

static const sqlite3_io_methods methods = {
    2, pc_close, pc_read, pc_write, pc_truncate, pc_sync, pc_size, pc_lock, pc_unlock, pc_check, pc_control, pc_sector, pc_device,
    pc_shm_map, pc_shm_lock, pc_shm_barrier, pc_shm_unmap, 0, 0,
};

static int pc_open(sqlite3_vfs *v, const char *name, sqlite3_file *file, int flags, int *out_flags) {
    (void)v;
    pc_file *f = (pc_file *)file;
    if (flags & SQLITE_OPEN_SUBJOURNAL) subjournals++;
    memset(f, 0, sizeof *f);
    f->real = (sqlite3_file *)(f + 1);
    int rc = real_vfs->xOpen(real_vfs, name, f->real, flags, out_flags);
    if (rc != SQLITE_OK) return rc;
    f->base.pMethods = &methods;
    f->real->pMethods->xFileSize(f->real, &f->synced_size);
    f->next_open = open_files;
    open_files = f;
    return SQLITE_OK;
}

static int pc_delete(sqlite3_vfs *v, const char *name, int sync_dir) {
    (void)v;
    if (cut) return SQLITE_IOERR_DELETE;
    return real_vfs->xDelete(real_vfs, name, sync_dir);
}

static int pc_access(sqlite3_vfs *v, const char *name, int flags, int *res) { (void)v; return real_vfs->xAccess(real_vfs, name, flags, res); }
static int pc_full(sqlite3_vfs *v, const char *name, int n, char *out) { (void)v; return real_vfs->xFullPathname(real_vfs, name, n, out); }
static int pc_random(sqlite3_vfs *v, int n, char *out) { (void)v; return real_vfs->xRandomness(real_vfs, n, out); }
static int pc_sleep(sqlite3_vfs *v, int us) { (void)v; return real_vfs->xSleep(real_vfs, us); }
static int pc_time(sqlite3_vfs *v, double *t) { (void)v; return real_vfs->xCurrentTime(real_vfs, t); }
static int pc_error(sqlite3_vfs *v, int n, char *out) { (void)v; return real_vfs->xGetLastError(real_vfs, n, out); }

int powercut_register(void) {
    if (real_vfs) return SQLITE_OK;
    real_vfs = sqlite3_vfs_find(0);
    if (!real_vfs) return SQLITE_ERROR;
    memset(&vfs, 0, sizeof vfs);
    vfs.iVersion = 1;
    vfs.szOsFile = (int)sizeof(pc_file) + real_vfs->szOsFile;
    vfs.mxPathname = real_vfs->mxPathname;
    vfs.zName = "powercut";
    vfs.xOpen = pc_open;
    vfs.xDelete = pc_delete;
    vfs.xAccess = pc_access;
    vfs.xFullPathname = pc_full;
    vfs.xDlOpen = 0;
    vfs.xRandomness = pc_random;
    vfs.xSleep = pc_sleep;
    vfs.xCurrentTime = pc_time;
    vfs.xGetLastError = pc_error;
    return sqlite3_vfs_register(&vfs, 0);
}

void powercut_arm(long ops) {
    countdown = ops;
    ops_seen = 0;
}

int powercut_happened(void) { return cut; }
long powercut_ops(void) { return ops_seen; }
long powercut_subjournals(void) { return subjournals; }
long powercut_syncs(void) { return syncs; }

void powercut_reset(void) {
    cut = 0;
    countdown = -1;
    ops_seen = 0;
    for (pc_file *f = open_files; f; f = f->next_open) forget(f);
}
