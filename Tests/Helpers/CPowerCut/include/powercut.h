/* A test-only SQLite VFS that simulates a power cut (after SQLite's own
 * crash tests): writes go to the real file, but every byte written since the
 * file's last xSync is remembered with what it replaced. At the cut, those
 * writes are undone (newest first) and each file is cut back to the size it
 * had at its last sync: exactly what a disk that lost its cache would hold.
 * After the cut every operation fails, as if the process died with the
 * power, so nothing written later can be acknowledged. */
#ifndef SPOOK_POWERCUT_H
#define SPOOK_POWERCUT_H

/* Registers the VFS "powercut" (once; later calls do nothing). 0 on success. */
int powercut_register(void);
/* Arms the cut after `ops` more writes, truncates and syncs (counted
 * together); -1 disarms. The cut happens inside the operation that reaches 0. */
void powercut_arm(long ops);
/* True once the power is cut. */
int powercut_happened(void);
/* Writes, truncates and syncs seen since the last arm (to pick cut points). */
long powercut_ops(void);
/* Statement journals SQLite opened as files through this VFS, ever. */
long powercut_subjournals(void);
/* Syncs of any file through this VFS, ever. */
long powercut_syncs(void);
/* Power back on: forgets the cut and every remembered write. */
void powercut_reset(void);

#endif
