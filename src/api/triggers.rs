//! The trigger functions: `mm_resolve` on replicated tables, and the two triggers of
//! `mm_conflict.tombstone`. Errors are raised with their own SQLSTATE (pgrx would report an `Err`
//! returned from a trigger as `XX000 Trigger function panic`).

use std::convert::Infallible;

use pgrx::prelude::*;
use pgrx::AllocatedByPostgres;

use crate::apply;
use crate::error::OrRaise;
use crate::pg::trigger::Firing;

#[pg_trigger]
fn mm_resolve<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, Infallible> {
    let firing = Firing::of(trigger);
    let row = apply::fire(&firing).or_raise();
    Ok(firing.returned(row))
}

#[pg_schema]
pub mod mm_conflict {
    use super::*;

    /// BEFORE INSERT OR UPDATE OR DELETE on mm_conflict.tombstone: resolves replicated tombstones
    /// against the stored one; purges (deletes) stay local to the node that ran them.
    #[pg_trigger]
    fn tombstone_resolve<'a>(
        trigger: &'a PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, Infallible> {
        let firing = Firing::of(trigger);
        let row = apply::tombstone::resolve(&firing).or_raise();
        Ok(firing.returned(row))
    }

    /// BEFORE TRUNCATE on replicated tables (`"!mm_truncate"`, created by `replicate_table`):
    /// refuses a local TRUNCATE, which is neither versioned nor replicated.
    #[pg_trigger]
    fn truncate_guard<'a>(
        trigger: &'a PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, Infallible> {
        apply::truncate(&Firing::of(trigger)).or_raise();
        Ok(None)
    }

    /// AFTER INSERT OR UPDATE on mm_conflict.tombstone: a tombstone that is new on this node (it
    /// got past `tombstone_resolve`) settles this node's row of the key, in replicated sessions.
    #[pg_trigger]
    fn tombstone_settle<'a>(
        trigger: &'a PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, Infallible> {
        let firing = Firing::of(trigger);
        apply::tombstone::check_firing(
            &firing,
            "mm_conflict.tombstone_settle",
            pg_sys::TRIGGER_EVENT_AFTER,
        )
        .or_raise();
        if crate::pg::is_replicated_session() {
            // The new tombstone row: an UPDATE's new row, an INSERT's row.
            let tuple = firing
                .new_row()
                .or_else(|| firing.row())
                .expect("a row trigger has its row");
            apply::tombstone::settle(tuple).or_raise();
        }
        Ok(None)
    }
}
