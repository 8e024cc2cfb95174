//! The write-ahead log: the position a wait for peers aims at.

/// Flushes the WAL up to the end of the last record inserted so far and returns that position as
/// `pg_lsn` text.
///
/// A logical walsender decodes only flushed WAL. The records of a transaction still in progress
/// (the caller's own, when it has written) sit in a partly filled page that the WAL writer leaves
/// alone until something else flushes it, which an idle server does every 15 s (when it logs its
/// running transactions). A peer cannot confirm a position the walsender has not read, so a wait
/// for that position would last until then. Flushing here costs one WAL fsync, what a commit pays.
/// The insert position itself may lie after an empty page's header, where no record ends: the
/// position returned is the last record's end (see `mm_conflict_core::wal::last_record_end`).
pub fn flushed_insert_position() -> String {
    // SAFETY: plain calls into the WAL machinery from a backend in a transaction, on a primary
    // (checked first); XLogFlush of the end of a record already inserted (or being inserted: it
    // waits for those) only waits and fsyncs; wal_segment_size is a backend global, only read.
    let lsn = unsafe {
        if pgrx::pg_sys::RecoveryInProgress() {
            return String::new();
        }
        let insert = pgrx::pg_sys::GetXLogInsertRecPtr();
        let end = mm_conflict_core::wal::last_record_end(
            insert,
            u64::from(pgrx::pg_sys::XLOG_BLCKSZ),
            pgrx::pg_sys::wal_segment_size as u64,
        );
        pgrx::pg_sys::XLogFlush(end);
        end
    };
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}
