//! The trigger functions: `mm_resolve` on replicated tables, and the two triggers of
//! `mm_conflict.tombstone`. Errors are raised with their own SQLSTATE (pgrx would report an `Err`
//! returned from a trigger as `XX000 Trigger function panic`).

use std::convert::Infallible;

use pgrx::prelude::*;
use pgrx::{AllocatedByPostgres, PgTupleDesc};

use crate::apply;
use crate::error::OrRaise;
use crate::pg::tuple::TupleRef;

/// The trigger's result: `tuple` (of the trigger's relation), or `None` to skip the row.
///
/// # Safety
/// `tuple` is null-free and belongs to the relation of `trigger`'s firing.
unsafe fn returned<'a>(
    trigger: &'a PgTrigger<'a>,
    tuple: Option<pg_sys::HeapTuple>,
) -> Option<PgHeapTuple<'a, AllocatedByPostgres>> {
    let td = trigger.trigger_data();
    tuple.map(|tuple| {
        // SAFETY: `tuple` is a tuple of the trigger's relation (the incoming one or a palloc'd
        // modified copy), described by its rd_att, which outlives this call.
        unsafe {
            PgHeapTuple::from_heap_tuple(
                PgTupleDesc::from_pg_unchecked((*td.tg_relation).rd_att),
                tuple,
            )
        }
    })
}

#[pg_trigger]
fn mm_resolve<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, Infallible> {
    // SAFETY: the TriggerData PostgreSQL passed to this firing; the result is one of its tuples.
    unsafe {
        let row = apply::fire(trigger.trigger_data()).or_raise();
        Ok(returned(trigger, row))
    }
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
        // SAFETY: the TriggerData of a firing on the tombstone table.
        unsafe {
            let row = apply::tombstone::resolve(trigger.trigger_data()).or_raise();
            Ok(returned(trigger, row))
        }
    }

    /// BEFORE TRUNCATE on replicated tables (`"!mm_truncate"`, created by `replicate_table`):
    /// refuses a local TRUNCATE, which is neither versioned nor replicated.
    #[pg_trigger]
    fn truncate_guard<'a>(
        trigger: &'a PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, Infallible> {
        // SAFETY: the TriggerData PostgreSQL passed to this firing.
        unsafe { apply::truncate(trigger.trigger_data()) }.or_raise();
        Ok(None)
    }

    /// AFTER INSERT OR UPDATE on mm_conflict.tombstone: a tombstone that is new on this node (it
    /// got past `tombstone_resolve`) settles this node's row of the key, in replicated sessions.
    #[pg_trigger]
    fn tombstone_settle<'a>(
        trigger: &'a PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, Infallible> {
        let td = trigger.trigger_data();
        // SAFETY: td is the TriggerData of this firing.
        unsafe {
            apply::tombstone::check_firing(
                td,
                "mm_conflict.tombstone_settle",
                pg_sys::TRIGGER_EVENT_AFTER,
            )
        }
        .or_raise();
        if crate::pg::is_replicated_session() {
            let tuple =
                if td.tg_event & pg_sys::TRIGGER_EVENT_OPMASK == pg_sys::TRIGGER_EVENT_UPDATE {
                    td.tg_newtuple
                } else {
                    td.tg_trigtuple
                };
            // SAFETY: td is the TriggerData of this firing; the tuple belongs to the tombstone
            // table (check_firing), described by its rd_att, and is valid while it fires.
            let tuple = unsafe { TupleRef::new(tuple, (*td.tg_relation).rd_att) };
            apply::tombstone::settle(tuple).or_raise();
        }
        Ok(None)
    }
}
