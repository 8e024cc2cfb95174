//! Triggers seen without `unsafe`: a firing ([`Firing`]: its event, its relation, its trigger and
//! tuples, and the tuple it hands back) and the triggers of an open relation ([`TriggerRef`]).

use pgrx::heap_tuple::PgHeapTuple;
use pgrx::{pg_sys, AllocatedByPostgres, PgMemoryContexts, PgTrigger, PgTupleDesc};

use super::names::cstr_to_string;
use super::relation::{Borrowed, Open};
use super::tuple::{TupleRef, Value};

/// One trigger of a relation: its OID and its function's, copied out of a trigger descriptor (a
/// relation's may be rebuilt by the next catalog read, which processes invalidations: nothing
/// here points into it).
#[derive(Clone, Copy, Debug)]
pub struct TriggerRef {
    oid: pg_sys::Oid,
    function: pg_sys::Oid,
}

impl TriggerRef {
    /// The trigger's OID (`pg_trigger.oid`).
    pub fn oid(self) -> pg_sys::Oid {
        self.oid
    }

    /// The OID of the function it runs.
    pub fn function(self) -> pg_sys::Oid {
        self.function
    }
}

/// The triggers of an open relation (its own, and those cloned from a partitioned ancestor), as
/// its trigger descriptor holds them now.
fn descriptor_triggers(rel: &impl Open) -> &[pg_sys::Trigger] {
    // SAFETY: `Open` keeps the relation open and locked while `rel` lives, and its descriptor
    // valid until the next catalog read (which may rebuild it): callers copy what they need out
    // of the slice before anything else runs.
    unsafe {
        let trigdesc = (*rel.raw()).trigdesc;
        if trigdesc.is_null() || (*trigdesc).numtriggers <= 0 {
            &[]
        } else {
            std::slice::from_raw_parts((*trigdesc).triggers, (*trigdesc).numtriggers as usize)
        }
    }
}

fn arguments(trigger: &pg_sys::Trigger) -> Vec<String> {
    (0..trigger.tgnargs.max(0) as usize)
        // SAFETY: a trigger of a valid descriptor has `tgnargs` NUL-terminated strings in
        // `tgargs`, copied out here.
        .map(|i| unsafe { cstr_to_string(*trigger.tgargs.add(i)) })
        .collect()
}

/// The first trigger of `rel` (its own, or cloned from a partitioned ancestor) for which `pred`
/// holds. Each is copied out before `pred` sees it, and the descriptor read anew for the next:
/// `pred` may read the catalogs.
pub fn find_trigger(
    rel: &impl Open,
    mut pred: impl FnMut(TriggerRef) -> bool,
) -> Option<TriggerRef> {
    let mut i = 0;
    while let Some(trigger) = descriptor_triggers(rel).get(i) {
        let trigger = TriggerRef {
            oid: trigger.tgoid,
            function: trigger.tgfoid,
        };
        if pred(trigger) {
            return Some(trigger);
        }
        i += 1;
    }
    None
}

/// The arguments given in `CREATE TRIGGER` to trigger `tgoid` of `rel` (`None`: `rel` has no
/// such trigger).
pub fn trigger_args(rel: &impl Open, tgoid: pg_sys::Oid) -> Option<Vec<String>> {
    descriptor_triggers(rel)
        .iter()
        .find(|t| t.tgoid == tgoid)
        .map(arguments)
}

/// A trigger PostgreSQL is firing: made from pgrx's [`PgTrigger`], which pgrx builds only from the
/// `TriggerData` of a firing. Everything it hands out stays valid while the firing lasts (`'a`).
pub struct Firing<'a> {
    td: &'a pg_sys::TriggerData,
    rel: Borrowed<'a>,
    /// The memory context the trigger was called in, where its result is made: PostgreSQL uses
    /// (and frees) that result after the trigger returns.
    context: pg_sys::MemoryContext,
}

impl<'a> Firing<'a> {
    pub fn of(trigger: &'a PgTrigger<'a>) -> Firing<'a> {
        let td = trigger.trigger_data();
        Firing {
            td,
            // SAFETY: PostgreSQL keeps the relation of a firing open and locked until the
            // trigger returns, which `'a` does not outlast.
            rel: unsafe { Borrowed::new(td.tg_relation) },
            // SAFETY: a read of the backend's current context, the one the trigger runs in.
            context: unsafe { pg_sys::CurrentMemoryContext },
        }
    }

    /// `tg_event`: timing, operation and level (`TRIGGER_EVENT_*`).
    pub fn event(&self) -> u32 {
        self.td.tg_event
    }

    /// The relation it fires on.
    pub fn relation(&self) -> &Borrowed<'a> {
        &self.rel
    }

    /// The relation's OID.
    pub fn relid(&self) -> pg_sys::Oid {
        super::relation::oid(&self.rel)
    }

    /// The trigger that fires.
    pub fn trigger(&self) -> TriggerRef {
        // SAFETY: a firing's trigger is set (pgrx's PgTrigger checked it is not null when it was
        // made) and valid while it fires: the executor's own copy of the descriptor.
        let trigger = unsafe { &*self.td.tg_trigger };
        TriggerRef {
            oid: trigger.tgoid,
            function: trigger.tgfoid,
        }
    }

    fn tuple(&self, tuple: pg_sys::HeapTuple) -> Option<TupleRef<'a>> {
        // SAFETY: a firing's tuples belong to its relation, are described by its descriptor and
        // stay valid while it fires.
        (!tuple.is_null()).then(|| unsafe { TupleRef::new(tuple, self.descriptor()) })
    }

    fn descriptor(&self) -> pg_sys::TupleDesc {
        // SAFETY: the relation is open while the firing lasts (`of`).
        unsafe { (*self.rel.raw()).rd_att }
    }

    /// The row it fires for: an INSERT's new row, an UPDATE's or DELETE's old one (`None` for a
    /// statement-level firing).
    pub fn row(&self) -> Option<TupleRef<'a>> {
        self.tuple(self.td.tg_trigtuple)
    }

    /// An UPDATE's new row (`None` for other events).
    pub fn new_row(&self) -> Option<TupleRef<'a>> {
        self.tuple(self.td.tg_newtuple)
    }

    /// A copy of `tuple` (one of the firing's) with the columns of `changes` replaced, each value
    /// checked against its column's type ([`TupleRef::with`]), made in the trigger's memory
    /// context: valid for the firing, and fit to be its result.
    pub fn modified(
        &self,
        tuple: TupleRef<'a>,
        changes: &[(pg_sys::AttrNumber, Value)],
    ) -> TupleRef<'a> {
        // SAFETY: the trigger's calling context outlives the firing (PostgreSQL frees the result
        // after the trigger returns); it is current only for this call.
        unsafe { PgMemoryContexts::For(self.context).switch_to(|_| tuple.with(changes)) }
    }

    /// What a row trigger hands back: `tuple` (one of the relation's, as they all are: the
    /// firing's own or a modified copy), or `None` to skip the row.
    pub fn returned(
        &self,
        tuple: Option<TupleRef<'a>>,
    ) -> Option<PgHeapTuple<'a, AllocatedByPostgres>> {
        let desc = self.descriptor();
        tuple.map(|tuple| {
            // A tuple of another descriptor would be written with this relation's layout.
            if !tuple.described_by(desc) {
                other_descriptor();
            }
            // SAFETY: a valid tuple of the relation (checked above), described by its
            // descriptor, which outlives the firing's result.
            unsafe {
                PgHeapTuple::from_heap_tuple(PgTupleDesc::from_pg_unchecked(desc), tuple.raw())
            }
        })
    }
}

#[cold]
#[inline(never)]
fn other_descriptor() -> ! {
    panic!("a trigger returned a tuple of another relation's descriptor");
}
