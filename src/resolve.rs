//! What `mm_resolve` does with one row: stamp a local write, or resolve a replicated one against
//! the stored version. The decisions themselves are `mm_conflict_core`'s; this module reads the
//! tuples, applies the decision and does the few things that need the server (key lock, primary
//! key probe, overwrite of a losing row).

use std::ffi::CString;

use mm_conflict_core::decide::{self, InsertAction, LocalAction, Outcome};
use mm_conflict_core::stamp::{stamp_local, Clock, Stamps};
use mm_conflict_core::{Criterion, Direction, RowStamps};
use pgrx::pg_sys;

use crate::error::MmError;
use crate::relinfo::{PrimaryKey, RelInfo};
use crate::{gucs, keylock, relinfo};

/// Runs the trigger for one row. `Ok(None)` skips the row (no new row version, no WAL).
///
/// # Safety
/// `td` must be the `TriggerData` of a trigger PostgreSQL is firing.
pub unsafe fn fire(td: &pg_sys::TriggerData) -> Result<Option<pg_sys::HeapTuple>, MmError> {
    let event = td.tg_event;
    let op = event & pg_sys::TRIGGER_EVENT_OPMASK;
    let is_insert = op == pg_sys::TRIGGER_EVENT_INSERT;
    if event & pg_sys::TRIGGER_EVENT_TIMINGMASK != pg_sys::TRIGGER_EVENT_BEFORE
        || event & pg_sys::TRIGGER_EVENT_ROW == 0
        || !(is_insert || op == pg_sys::TRIGGER_EVENT_UPDATE)
    {
        return Err(MmError::WrongTriggerEvent {
            fired: describe_event(event),
        });
    }
    // SAFETY (whole body): td and everything it points to is valid during the firing (caller's
    // contract); tuples belong to td.tg_relation and are described by its rd_att.
    unsafe {
        let info = relinfo::lookup(td)?;
        let tupdesc = (*td.tg_relation).rd_att;
        match (is_insert, is_replicated_session()) {
            (true, false) => Ok(Some(local_insert(&info, td.tg_trigtuple, tupdesc))),
            (false, false) => local_update(&info, td.tg_trigtuple, td.tg_newtuple, tupdesc),
            (true, true) => replicated_insert(&info, td, tupdesc),
            (false, true) => Ok(replicated_update(
                &info,
                td.tg_trigtuple,
                td.tg_newtuple,
                tupdesc,
            )),
        }
    }
}

/// True in an apply or table-sync worker (and in any session that set up a replication origin
/// with `pg_replication_origin_session_setup`): such a session applies changes made elsewhere.
pub fn is_replicated_session() -> bool {
    // SAFETY: a plain read of a backend-local global.
    unsafe {
        pg_sys::replorigin_session_origin != pg_sys::InvalidRepOriginId as pg_sys::RepOriginId
    }
}

fn describe_event(event: u32) -> String {
    let timing = match event & pg_sys::TRIGGER_EVENT_TIMINGMASK {
        pg_sys::TRIGGER_EVENT_BEFORE => "BEFORE",
        pg_sys::TRIGGER_EVENT_INSTEAD => "INSTEAD OF",
        _ => "AFTER",
    };
    let op = match event & pg_sys::TRIGGER_EVENT_OPMASK {
        pg_sys::TRIGGER_EVENT_INSERT => "INSERT",
        pg_sys::TRIGGER_EVENT_UPDATE => "UPDATE",
        pg_sys::TRIGGER_EVENT_DELETE => "DELETE",
        _ => "TRUNCATE",
    };
    let level = if event & pg_sys::TRIGGER_EVENT_ROW != 0 {
        "ROW"
    } else {
        "STATEMENT"
    };
    format!("{timing} {op} FOR EACH {level}")
}

fn clock() -> Clock {
    // SAFETY: both read the backend's clocks and cannot fail.
    unsafe {
        Clock {
            xact_start: pg_sys::GetCurrentTransactionStartTimestamp(),
            wall: pg_sys::GetCurrentTimestamp(),
        }
    }
}

/// A copy of `tuple` with the bookkeeping columns set: a local write gets `mm_islocal = true`,
/// this node's id and `stamps`; a replicated one (`stamps = None`) only `mm_islocal = false`.
unsafe fn with_bookkeeping(
    info: &RelInfo,
    tuple: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
    stamps: Option<Stamps>,
) -> pg_sys::HeapTuple {
    let mut cols: [i32; 4] = [
        info.att_islocal as i32,
        info.att_nodeid as i32,
        info.att_xacttime as i32,
        info.att_stattime as i32,
    ];
    let mut values = [pg_sys::Datum::from(false); 4];
    let mut nulls = [false; 4];
    let n = match stamps {
        Some(s) => {
            values = [
                pg_sys::Datum::from(true),
                pg_sys::Datum::from(info.policy.node_id),
                pg_sys::Datum::from(s.xacttime),
                pg_sys::Datum::from(s.stattime),
            ];
            4
        }
        None => 1,
    };
    // SAFETY: the arrays hold n valid entries for attnums of this descriptor; the result is
    // palloc'd in the trigger's memory context, as PostgreSQL expects of a returned tuple.
    unsafe {
        pg_sys::heap_modify_tuple_by_cols(
            tuple,
            tupdesc,
            n,
            cols.as_mut_ptr(),
            values.as_mut_ptr(),
            nulls.as_mut_ptr(),
        )
    }
}

/// `tuple` marked as arrived from a peer (`mm_islocal = false`), copied only if needed.
unsafe fn as_replicated(
    info: &RelInfo,
    tuple: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
) -> pg_sys::HeapTuple {
    let mut isnull = false;
    // SAFETY: forwarded from the caller: tuple is described by tupdesc.
    unsafe {
        let islocal = pg_sys::heap_getattr(tuple, info.att_islocal as i32, tupdesc, &mut isnull);
        if !isnull && islocal.value() == 0 {
            return tuple;
        }
        with_bookkeeping(info, tuple, tupdesc, None)
    }
}

unsafe fn key_hash(pk: &PrimaryKey, tuple: pg_sys::HeapTuple, tupdesc: pg_sys::TupleDesc) -> u32 {
    let mut hash: u32 = 0;
    for col in &pk.columns {
        let mut isnull = false;
        // SAFETY: key attnums were read from this relation's primary key; the hash function is
        // the type's own, called with the index collation.
        let value = unsafe {
            let datum = pg_sys::heap_getattr(tuple, col.attnum as i32, tupdesc, &mut isnull);
            match &col.hash {
                Some(finfo) if !isnull => {
                    pg_sys::FunctionCall1Coll(finfo.get(), col.collation, datum).value() as u32
                }
                _ => 0,
            }
        };
        // PostgreSQL's hash_combine.
        hash ^= value
            .wrapping_add(0x9e37_79b9)
            .wrapping_add(hash << 6)
            .wrapping_add(hash >> 2);
    }
    hash
}

unsafe fn local_insert(
    info: &RelInfo,
    tuple: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
) -> pg_sys::HeapTuple {
    // SAFETY: forwarded from `fire`.
    unsafe {
        if let Some(pk) = &info.primary_key {
            keylock::lock_key(info.relid, key_hash(pk, tuple, tupdesc));
        }
        with_bookkeeping(info, tuple, tupdesc, Some(stamp_local(clock(), None)))
    }
}

unsafe fn local_update(
    info: &RelInfo,
    old: pg_sys::HeapTuple,
    new: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
) -> Result<Option<pg_sys::HeapTuple>, MmError> {
    // SAFETY: forwarded from `fire`.
    unsafe {
        let stored = info.stamps(old, tupdesc);
        let stamps = stamp_local(clock(), Some(&stored));
        let written = RowStamps {
            xacttime: Some(stamps.xacttime),
            stattime: Some(stamps.stattime),
            node: Some(info.policy.node_id),
            user_criterion: info.stamps(new, tupdesc).user_criterion,
        };
        let stored_version = info.policy.version(&stored);
        let written_version = info.policy.version(&written);
        match decide::local_write(
            &info.order,
            &stored_version,
            &written_version,
            gucs::local_conflict_mode(),
        ) {
            LocalAction::Write => Ok(Some(with_bookkeeping(info, new, tupdesc, Some(stamps)))),
            LocalAction::Skip => Ok(None),
            LocalAction::RaiseConflict => {
                let column = info.policy.criterion_column();
                Err(MmError::LocalConflict {
                    table: info.table.clone(),
                    operation: "update",
                    detail: format!(
                        "Stored version: {}. This write: {}.",
                        stored_version.describe(column),
                        written_version.describe(column)
                    ),
                    hint: local_conflict_hint(info),
                })
            }
        }
    }
}

fn local_conflict_hint(info: &RelInfo) -> String {
    let escape = "or SET mm_conflict.local_conflict = skip (drop such writes) or apply (write anyway; this node then diverges from its peers).";
    match (&info.policy.criterion, info.policy.direction) {
        (Criterion::NodeId { winner }, _) => {
            format!("Under criterion nodeid, rows last written by node {winner} can only be changed by node {winner}; make the change there, {escape}")
        }
        (Criterion::Column(column), direction) => format!(
            "Under \"{}\" on column \"{column}\", a write must carry a {} value than the stored row: set \"{column}\" accordingly, {escape}",
            if direction == Direction::Last { "last" } else { "first" },
            if direction == Direction::Last { "newer" } else { "older" },
        ),
        (_, _) => format!(
            "Under \"first\", the first version of a row wins on every node, so updates are refused; use \"last\" to let updates win, {escape}"
        ),
    }
}

unsafe fn replicated_update(
    info: &RelInfo,
    old: pg_sys::HeapTuple,
    new: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
) -> Option<pg_sys::HeapTuple> {
    // SAFETY: forwarded from `fire`.
    unsafe {
        let stored = info.policy.version(&info.stamps(old, tupdesc));
        let incoming = info.policy.version(&info.stamps(new, tupdesc));
        match decide::resolve(&info.order, &stored, &incoming) {
            Outcome::IncomingWins => Some(as_replicated(info, new, tupdesc)),
            Outcome::StoredWins | Outcome::SameVersion => None,
        }
    }
}

unsafe fn replicated_insert(
    info: &RelInfo,
    td: &pg_sys::TriggerData,
    tupdesc: pg_sys::TupleDesc,
) -> Result<Option<pg_sys::HeapTuple>, MmError> {
    let pk = info
        .primary_key
        .as_ref()
        .ok_or_else(|| MmError::NoPrimaryKey {
            table: info.table.clone(),
        })?;
    // SAFETY: forwarded from `fire`; for INSERT, tg_trigslot holds the new row.
    unsafe {
        let tuple = td.tg_trigtuple;
        keylock::lock_key(info.relid, key_hash(pk, tuple, tupdesc));
        let incoming = info.policy.version(&info.stamps(tuple, tupdesc));
        let stored = probe_primary_key(info, td.tg_relation, pk, td.tg_trigslot)
            .map(|s| info.policy.version(&s));
        match decide::replicated_insert(&info.order, stored.as_ref(), &incoming) {
            InsertAction::Insert => Ok(Some(as_replicated(info, tuple, tupdesc))),
            InsertAction::ConvertToUpdate => {
                overwrite(info, tuple, tupdesc);
                Ok(None)
            }
            InsertAction::Skip(_) => Ok(None),
        }
    }
}

/// Finds the stored row with the incoming row's key, seeing rows of transactions still in
/// progress and waiting for them (PostgreSQL's own apply-side lookup, with a dirty snapshot),
/// and locks it. Returns its bookkeeping values.
unsafe fn probe_primary_key(
    info: &RelInfo,
    rel: pg_sys::Relation,
    pk: &PrimaryKey,
    search: *mut pg_sys::TupleTableSlot,
) -> Option<RowStamps> {
    // SAFETY: rel is open and locked by the executor; `search` is the trigger's slot holding the
    // incoming row; `found_slot` is created and dropped here. The lookup reads the key columns
    // from tts_values, so the search slot is deformed first.
    unsafe {
        let natts = (*(*rel).rd_att).natts;
        if ((*search).tts_nvalid as i32) < natts {
            pg_sys::slot_getsomeattrs_int(search, natts);
        }
        let found_slot = pg_sys::table_slot_create(rel, std::ptr::null_mut());
        let found = pg_sys::RelationFindReplTupleByIndex(
            rel,
            pk.index_oid,
            pg_sys::LockTupleMode::LockTupleExclusive,
            search,
            found_slot,
        );
        let stamps = found.then(|| {
            let mut should_free = false;
            let tuple = pg_sys::ExecFetchSlotHeapTuple(found_slot, false, &mut should_free);
            let stamps = info.stamps(tuple, (*rel).rd_att);
            if should_free {
                pg_sys::heap_freetuple(tuple);
            }
            stamps
        });
        pg_sys::ExecDropSingleTupleTableSlot(found_slot);
        stamps
    }
}

/// Overwrites the stored row that has `tuple`'s key with `tuple` (an INSERT that won against an
/// existing row becomes an UPDATE). Runs as SQL so that indexes, other triggers and the UPDATE's
/// own resolution by `mm_resolve` happen exactly as for a replicated UPDATE.
unsafe fn overwrite(info: &RelInfo, tuple: pg_sys::HeapTuple, tupdesc: pg_sys::TupleDesc) {
    // SAFETY: SPI is connected and finished here; the plan is kept in the RelInfo and freed with
    // it; values point into `tuple`, which outlives the call.
    unsafe {
        if pg_sys::SPI_connect() != pg_sys::SPI_OK_CONNECT as i32 {
            pgrx::error!("mm_resolve: SPI_connect failed");
        }
        let mut plan = info.overwrite_plan.get();
        if plan.is_null() {
            let attrs = (*tupdesc).attrs.as_slice((*tupdesc).natts as usize);
            let mut argtypes: Vec<pg_sys::Oid> = info
                .live_attnums
                .iter()
                .map(|&attnum| attrs[attnum as usize - 1].atttypid)
                .collect();
            let sql = CString::new(info.overwrite_sql.as_str()).expect("SQL without NUL");
            plan = pg_sys::SPI_prepare(sql.as_ptr(), argtypes.len() as i32, argtypes.as_mut_ptr());
            if plan.is_null() || pg_sys::SPI_keepplan(plan) != 0 {
                pgrx::error!("mm_resolve: could not prepare \"{}\"", info.overwrite_sql);
            }
            info.overwrite_plan.set(plan);
        }
        let natts = (*tupdesc).natts as usize;
        let mut all_values = vec![pg_sys::Datum::from(0); natts];
        let mut all_nulls = vec![false; natts];
        pg_sys::heap_deform_tuple(
            tuple,
            tupdesc,
            all_values.as_mut_ptr(),
            all_nulls.as_mut_ptr(),
        );
        let mut values: Vec<pg_sys::Datum> = Vec::with_capacity(info.live_attnums.len());
        let mut nulls: Vec<std::ffi::c_char> = Vec::with_capacity(info.live_attnums.len() + 1);
        for &attnum in &info.live_attnums {
            let i = attnum as usize - 1;
            values.push(all_values[i]);
            nulls.push(if all_nulls[i] { b'n' } else { b' ' } as std::ffi::c_char);
        }
        nulls.push(0);
        let rc = pg_sys::SPI_execute_plan(plan, values.as_mut_ptr(), nulls.as_ptr(), false, 0);
        if rc != pg_sys::SPI_OK_UPDATE as i32 {
            pgrx::error!(
                "mm_resolve: overwrite of a row in {} failed (SPI code {rc})",
                info.table
            );
        }
        pg_sys::SPI_finish();
    }
}
