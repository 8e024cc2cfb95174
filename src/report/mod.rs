//! Conflict visibility: every replicated change the engine resolves is counted per table
//! ([`counters`]), and each conflict among them is reported as `mm_conflict.log_conflicts` says
//! ([`log`]: a server-log line, a row in `mm_conflict.conflict_log`, or nothing).

pub mod counters;
pub mod log;
pub mod progress;

use crate::catalog::relinfo::{RelInfo, Row};
use crate::gucs::{self, LogConflicts};

/// One resolution, as the engine reports it.
pub type Resolution<'a, 'r> = mm_conflict_core::Resolution<'a, Row<'r>>;

/// True when a conflict would be written somewhere: the caller may skip copying rows otherwise.
pub fn rows_wanted() -> bool {
    gucs::LOG_CONFLICTS.get() != LogConflicts::Off
}

/// Counts a resolution and, if it is a conflict, reports it as `log_conflicts` says (inside the
/// trigger's transaction, where `log_row` inserts the conflict_log row).
pub fn report(info: &RelInfo, r: &Resolution) {
    let conflict = r.decision.is_conflict(r.stored.as_ref(), &r.incoming);
    counters::count(info.report_relid, r.decision, conflict);
    if !conflict {
        return;
    }
    match gucs::LOG_CONFLICTS.get() {
        LogConflicts::Off => {}
        LogConflicts::Log => log::log_line(info, r),
        LogConflicts::Table => log::log_row(info, r),
    }
}
