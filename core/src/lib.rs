//! The pure decision core of mm_conflict: no PostgreSQL types, no I/O.
//!
//! * [`policy`]: trigger arguments → [`Policy`].
//! * [`version`]: row versions and the total order every node applies.
//! * [`decide`]: what the trigger does with a local or replicated write.
//! * [`stamp`]: the hybrid-logical-clock stamps of local writes.
//! * [`delta`]: delta (commutative) columns: per-node contributions, merged.
//! * [`report`]: how a replicated change ended, and whether that is a conflict.
//! * [`sequence`]: node-safe sequences (staggered steps).
//! * [`engine`]: the sequence of every path (look up, lock, decide, write, re-send, report),
//!   written against a small store trait that PostgreSQL implements in production and an
//!   in-memory mesh implements in the property test.
//! * [`diff`]: the plan of `table_diff`'s descent (bucket hashes compared level by level).
//! * [`mesh`]: the plans of `create_mesh` and `subscribe` (steps, undo, the SQL they send).
//! * [`membership`]: the plans of `remove_node` and `add_node` (stop, catch up, drop; which node, which step, in which
//!   order), with its property test over an in-memory mesh.
//! * [`ddl`]: the plan of `replicate_ddl` (stop sending what disappears, drain, change everywhere,
//!   commit).
//! * [`sql`]: quoting identifiers and literals for SQL text.
//! * [`repair`]: the plan of `mm_conflict.repair` (which keys, which rounds of transfers), written
//!   against a small mesh trait, driven the same two ways.
//!
//! Module order (imports point down only): engine, repair, diff, ddl → membership → mesh → report, sql → decide →
//! policy → stamp → version; engine → delta → version.

pub mod ddl;
pub mod decide;
pub mod delta;
pub mod diff;
pub mod engine;
pub mod membership;
pub mod mesh;
pub mod policy;
pub mod repair;
pub mod report;
pub mod sequence;
pub mod sql;
pub mod stamp;
pub mod version;
pub mod wal;

pub use decide::{
    repair_winner, DeleteAction, Held, InsertAction, LocalAction, LocalConflictMode, Outcome,
    RepairWinner,
};
pub use delta::{Amount, Delta, DeltaError};
pub use engine::{
    Action, Local, Lookup, Operation, Refusal, Resolution, Store, Stored, Tombstone, Tombstones,
};
pub use policy::{
    Criterion, Direction, Policy, PolicyError, DELTA_PREFIX, MAX_NODE_ID, MIN_NODE_ID,
};
pub use report::Decision;
pub use stamp::{Clock, Stamps};
pub use version::{Micros, NodeId, RowStamps, Version, VersionOrder};

/// Bookkeeping columns, named as in the article.
pub const COL_ISLOCAL: &str = "mm_islocal";
pub const COL_NODEID: &str = "mm_nodeid";
pub const COL_XACTTIME: &str = "mm_last_xacttime";
pub const COL_STATTIME: &str = "mm_last_stattime";
/// The state of a table's delta columns (only on tables that declare some).
pub const COL_DELTA: &str = "mm_delta";
