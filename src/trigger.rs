//! The `mm_resolve` trigger function: a thin shim between PostgreSQL's trigger protocol and
//! `resolve::fire`. Errors are raised with their own SQLSTATE (pgrx would report an `Err` returned
//! from a trigger as `XX000 Trigger function panic`).

use std::convert::Infallible;

use pgrx::prelude::*;
use pgrx::{AllocatedByPostgres, PgTupleDesc};

use crate::error::OrRaise;

#[pg_trigger]
fn mm_resolve<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, Infallible> {
    let td = trigger.trigger_data();
    // SAFETY: td is the TriggerData PostgreSQL passed to this firing.
    let row = unsafe { crate::resolve::fire(td) }.or_raise();
    Ok(row.map(|tuple| {
        // SAFETY: `tuple` is a tuple of the trigger's relation (the incoming one or a palloc'd
        // modified copy), described by its rd_att, which outlives this call.
        unsafe {
            PgHeapTuple::from_heap_tuple(
                PgTupleDesc::from_pg_unchecked((*td.tg_relation).rd_att),
                tuple,
            )
        }
    }))
}
