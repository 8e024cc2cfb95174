//! The write-ahead log: the position a wait for peers aims at.

/// Flushes the WAL up to its current insert position and returns that position as `pg_lsn` text.
///
/// A logical walsender decodes only flushed WAL. The records of a transaction still in progress
/// (the caller's own, when it has written) sit in a partly filled page that the WAL writer leaves
/// alone until something else flushes it, which an idle server does every 15 s (when it logs its
/// running transactions). A peer cannot confirm a position the walsender has not read, so a wait
/// for that position would last until then. Flushing here costs one WAL fsync, what a commit pays.
pub fn flushed_insert_position() -> String {
    // SAFETY: both are plain calls into the WAL machinery from a backend in a transaction, on a
    // primary (pg_current_wal_insert_lsn() would have refused in recovery, and so does the
    // caller's slot query); XLogFlush of a position already inserted only waits and fsyncs.
    let lsn = unsafe {
        if pgrx::pg_sys::RecoveryInProgress() {
            return String::new();
        }
        let lsn = pgrx::pg_sys::GetXLogInsertRecPtr();
        pgrx::pg_sys::XLogFlush(lsn);
        lsn
    };
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}
