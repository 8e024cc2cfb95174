//! What mm_conflict knows about the tables it works on, cached per backend and dropped by
//! relcache invalidations, so that the per-row path does no catalog lookups.
//!
//! * [`relinfo`]: a replicated table: its policy, bookkeeping columns, primary key, statements.
//! * [`statements`]: the SQL text of the statements the engine runs on a table's rare paths.
//! * [`tombstones`]: `mm_conflict.tombstone`: reading, probing and writing tombstones.
//! * [`mark`]: the tombstones' high-water mark (shared memory), which lets a local INSERT skip
//!   the probe.

pub mod mark;
pub mod relinfo;
pub mod statements;
pub mod tombstones;
