//! The pure decision core of mm_conflict: no PostgreSQL types, no I/O.
//!
//! * [`policy`]: trigger arguments → [`Policy`].
//! * [`version`]: row versions and the total order every node applies.
//! * [`decide`]: what the trigger does with a local or replicated write.
//! * [`stamp`]: the hybrid-logical-clock stamps of local writes.
//! * [`report`]: how a replicated change ended, and whether that is a conflict.
//!
//! The `mm_resolve` trigger in the extension crate is a thin shim over these functions.

pub mod decide;
pub mod policy;
pub mod report;
pub mod stamp;
pub mod version;

pub use decide::{DeleteAction, InsertAction, LocalAction, LocalConflictMode, Outcome};
pub use policy::{Criterion, Direction, Policy, PolicyError, MAX_NODE_ID, MIN_NODE_ID};
pub use report::Decision;
pub use stamp::{Clock, Stamps};
pub use version::{Micros, NodeId, RowStamps, Version, VersionOrder};

/// Bookkeeping columns, named as in the article.
pub const COL_ISLOCAL: &str = "mm_islocal";
pub const COL_NODEID: &str = "mm_nodeid";
pub const COL_XACTTIME: &str = "mm_last_xacttime";
pub const COL_STATTIME: &str = "mm_last_stattime";
