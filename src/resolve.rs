//! What `mm_resolve` does with one row: stamp a local write, or resolve a replicated one against
//! the stored version (row or tombstone). The decisions themselves are `mm_conflict_core`'s; this
//! module reads the tuples, applies the decision and does the few things that need the server
//! (key lock, key probes, tombstones, overwrite and re-send of rows).

use mm_conflict_core::decide::{self, DeleteAction, InsertAction, LocalAction, Outcome};
use mm_conflict_core::stamp::{stamp_local, Clock, Stamps};
use mm_conflict_core::{Criterion, Decision, Direction, Version};
use pgrx::pg_sys;

use crate::conflicts::{self, Converting, Resolution, Row};
use crate::error::MmError;
use crate::probe::{self, Probe};
use crate::relinfo::{PrimaryKey, RelInfo};
use crate::tombstone::{self, OwnWrite, Tombstone};
use crate::{gucs, keylock, relinfo};

/// Runs the trigger for one row. `Ok(None)` skips the row (no new row version, no WAL).
///
/// # Safety
/// `td` must be the `TriggerData` of a trigger PostgreSQL is firing.
pub unsafe fn fire(td: &pg_sys::TriggerData) -> Result<Option<pg_sys::HeapTuple>, MmError> {
    let event = td.tg_event;
    let op = event & pg_sys::TRIGGER_EVENT_OPMASK;
    if event & pg_sys::TRIGGER_EVENT_TIMINGMASK != pg_sys::TRIGGER_EVENT_BEFORE
        || event & pg_sys::TRIGGER_EVENT_ROW == 0
        || op == pg_sys::TRIGGER_EVENT_TRUNCATE
    {
        return Err(MmError::WrongTriggerEvent {
            fired: describe_event(event),
        });
    }
    // SAFETY (whole body): td and everything it points to is valid during the firing (caller's
    // contract); tuples belong to td.tg_relation and are described by its rd_att.
    unsafe {
        let info = relinfo::lookup(td.tg_relation, &*td.tg_trigger)?;
        let tupdesc = (*td.tg_relation).rd_att;
        let (old, new) = (td.tg_trigtuple, td.tg_newtuple);
        match (op, is_replicated_session()) {
            (pg_sys::TRIGGER_EVENT_INSERT, false) => local_insert(&info, old, tupdesc),
            (pg_sys::TRIGGER_EVENT_UPDATE, false) => local_update(&info, old, new, tupdesc),
            (pg_sys::TRIGGER_EVENT_DELETE, false) => local_delete(&info, old, tupdesc),
            (pg_sys::TRIGGER_EVENT_INSERT, true) => {
                replicated_insert(&info, td.tg_relation, old, tupdesc)
            }
            (pg_sys::TRIGGER_EVENT_UPDATE, true) => Ok(replicated_update(&info, old, new, tupdesc)),
            _ => Ok(replicated_delete(&info, old, tupdesc)),
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

/// The key values of `tuple` and the key in binary form.
unsafe fn key_of(
    pk: &PrimaryKey,
    tuple: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
) -> (Vec<pg_sys::Datum>, Vec<u8>) {
    // SAFETY: forwarded from the caller.
    unsafe {
        let values = pk.values(tuple, tupdesc);
        let key = pk.encode(&values);
        (values, key)
    }
}

/// Takes the key lock and reads the key's tombstone, waiting (without the lock) for a tombstone
/// still being written. Returns with the lock held.
fn lock_and_find_tombstone(info: &RelInfo, key: &[u8]) -> Option<Tombstone> {
    let table = tombstone::table();
    probe::locked(info.table_hash, key, || table.probe(&info.table, key))
}

fn conflict_error(
    info: &RelInfo,
    operation: &'static str,
    stored: &Version,
    written: &Version,
) -> MmError {
    let column = info.policy.criterion_column();
    MmError::LocalConflict {
        table: info.table.clone(),
        operation,
        detail: format!(
            "Stored version: {}. This write: {}.",
            stored.describe(column),
            written.describe(column)
        ),
        hint: local_conflict_hint(info),
    }
}

unsafe fn local_insert(
    info: &RelInfo,
    tuple: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
) -> Result<Option<pg_sys::HeapTuple>, MmError> {
    // SAFETY: forwarded from `fire`.
    unsafe {
        // A re-insert after a delete must beat the key's tombstone: stamp above it.
        let tombstone = match &info.primary_key {
            Some(pk) => lock_and_find_tombstone(info, &key_of(pk, tuple, tupdesc).1),
            None => None,
        };
        let stamps = stamp_local(clock(), tombstone.as_ref().map(|t| &t.stamps));
        if let Some(t) = &tombstone {
            let written = info
                .policy
                .local_version(&stamps, info.stamps(tuple, tupdesc).user_criterion);
            match decide::local_write(
                &info.order,
                &t.version,
                &written,
                gucs::local_conflict_mode(),
            ) {
                LocalAction::Write => {}
                LocalAction::Skip => return Ok(None),
                LocalAction::RaiseConflict => {
                    return Err(conflict_error(info, "insert", &t.version, &written))
                }
            }
        }
        Ok(Some(with_bookkeeping(info, tuple, tupdesc, Some(stamps))))
    }
}

unsafe fn local_delete(
    info: &RelInfo,
    old: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
) -> Result<Option<pg_sys::HeapTuple>, MmError> {
    // Without a primary key a delete cannot be versioned; PostgreSQL itself refuses to publish
    // deletes of a table without a replica identity.
    let Some(pk) = &info.primary_key else {
        return Ok(Some(old));
    };
    // SAFETY: forwarded from `fire`.
    unsafe {
        let (_, key) = key_of(pk, old, tupdesc);
        keylock::lock_key(info.table_hash, &key);
        let stored = info.stamps(old, tupdesc);
        let stamps = stamp_local(clock(), Some(&stored));
        let tombstone = info.policy.tombstone_version(&stored, &stamps);
        let stored_version = info.policy.version(&stored);
        match decide::local_write(
            &info.order,
            &stored_version,
            &tombstone,
            gucs::local_conflict_mode(),
        ) {
            LocalAction::Write => {
                tombstone::table().record(info, &key, &tombstone, &stamps);
                Ok(Some(old))
            }
            LocalAction::Skip => Ok(None),
            LocalAction::RaiseConflict => {
                Err(conflict_error(info, "delete", &stored_version, &tombstone))
            }
        }
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
        let stored_version = info.policy.version(&stored);
        let written_version = info
            .policy
            .local_version(&stamps, info.stamps(new, tupdesc).user_criterion);
        match decide::local_write(
            &info.order,
            &stored_version,
            &written_version,
            gucs::local_conflict_mode(),
        ) {
            LocalAction::Write => Ok(Some(with_bookkeeping(info, new, tupdesc, Some(stamps)))),
            LocalAction::Skip => Ok(None),
            LocalAction::RaiseConflict => Err(conflict_error(
                info,
                "update",
                &stored_version,
                &written_version,
            )),
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
            "Under \"first\", the first version of a row wins on every node, so updates and deletes are refused; use \"last\" to let updates win, {escape}"
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
        let outcome = decide::resolve(&info.order, &stored, &incoming);
        // An UPDATE that carries out an INSERT's conversion is reported as that INSERT.
        if !Converting::active() {
            conflicts::report(
                info,
                tupdesc,
                &Resolution {
                    decision: outcome.into(),
                    stored: Some(stored),
                    stored_row: Some(Row::Tuple(old)),
                    incoming,
                    incoming_row: Some(Row::Tuple(new)),
                },
            );
        }
        match outcome {
            Outcome::IncomingWins => Some(as_replicated(info, new, tupdesc)),
            Outcome::StoredWins | Outcome::SameVersion => None,
        }
    }
}

/// A replicated DELETE applies only when the key's tombstone (which travels before it in the same
/// transaction) beats the row. A DELETE without a tombstone (an unversioned delete, or the first
/// half of a re-send) is skipped.
unsafe fn replicated_delete(
    info: &RelInfo,
    old: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
) -> Option<pg_sys::HeapTuple> {
    if OwnWrite::active() {
        return Some(old); // our own re-send
    }
    // Without a primary key there is no tombstone to compare with: apply as PostgreSQL would.
    let Some(pk) = &info.primary_key else {
        return Some(old);
    };
    // SAFETY: forwarded from `fire`.
    unsafe {
        let (_, key) = key_of(pk, old, tupdesc);
        let tombstone = lock_and_find_tombstone(info, &key);
        keylock::release_previous();
        let stored = info.policy.version(&info.stamps(old, tupdesc));
        match decide::replicated_delete(
            &info.order,
            &stored,
            tombstone.as_ref().map(|t| &t.version),
        ) {
            DeleteAction::Delete => {
                conflicts::report(
                    info,
                    tupdesc,
                    &Resolution {
                        decision: Decision::DeleteApplied,
                        stored: Some(stored),
                        stored_row: Some(Row::Tuple(old)),
                        incoming: tombstone
                            .expect("a delete that applies has a tombstone")
                            .version,
                        incoming_row: None,
                    },
                );
                Some(old)
            }
            // A row that beats the key's tombstone was settled (and reported) when the tombstone
            // arrived; a DELETE without one is the first half of a re-send.
            DeleteAction::Keep | DeleteAction::KeepAndResend => None,
        }
    }
}

unsafe fn replicated_insert(
    info: &RelInfo,
    rel: pg_sys::Relation,
    tuple: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
) -> Result<Option<pg_sys::HeapTuple>, MmError> {
    let pk = info
        .primary_key
        .as_ref()
        .ok_or_else(|| MmError::NoPrimaryKey {
            table: info.table.clone(),
        })?;
    // SAFETY: forwarded from `fire`.
    unsafe {
        let (values, key) = key_of(pk, tuple, tupdesc);
        let incoming = info.policy.version(&info.stamps(tuple, tupdesc));
        let own_write = OwnWrite::active();
        // The stored row is copied only when a conflict could be written out.
        let copy_row = !own_write && conflicts::rows_wanted();
        let report = |decision, stored: Option<Version>, stored_row: Option<pg_sys::HeapTuple>| {
            if !own_write {
                conflicts::report(
                    info,
                    tupdesc,
                    &Resolution {
                        decision,
                        stored,
                        stored_row: stored_row.map(Row::Tuple),
                        incoming,
                        incoming_row: Some(Row::Tuple(tuple)),
                    },
                );
            }
        };
        // Probe under the key lock; never wait while holding it (see keylock and probe).
        loop {
            let (stored, stored_row) = match probe::locked(info.table_hash, &key, || {
                probe::probe(rel, pk, &values, &|row| {
                    let copy = copy_row.then(|| pg_sys::heap_copytuple(row));
                    (info.stamps(row, tupdesc), copy)
                })
            }) {
                Some((stamps, copy)) => {
                    keylock::release_previous();
                    (Some(info.policy.version(&stamps)), copy)
                }
                None => (None, None),
            };
            // No row: the key's tombstone decides (still under the key lock).
            let tombstone = match stored {
                Some(_) => None,
                None => match tombstone::table().probe(&info.table, &key) {
                    Probe::Absent => None,
                    Probe::Present(t) => Some(t.version),
                    Probe::InProgress(xid) => {
                        keylock::release_and_wait(xid);
                        continue;
                    }
                },
            };
            match decide::replicated_insert(
                &info.order,
                stored.as_ref(),
                tombstone.as_ref(),
                &incoming,
            ) {
                // Keep the lock until our index entry exists: no one can insert the key meanwhile.
                InsertAction::Insert => {
                    report(Decision::Applied, tombstone, None);
                    return Ok(Some(if own_write {
                        tuple
                    } else {
                        as_replicated(info, tuple, tupdesc)
                    }));
                }
                InsertAction::ConvertToUpdate => {
                    // Zero rows: the row changed or vanished since the probe; decide again.
                    let converted = {
                        let _converting = Converting::start();
                        overwrite(info, tuple, tupdesc)
                    };
                    if converted > 0 {
                        report(Decision::InsertConvertedToUpdate, stored, stored_row);
                        return Ok(None);
                    }
                }
                InsertAction::Skip(outcome) => {
                    keylock::release_previous();
                    report(outcome.into(), stored.or(tombstone), stored_row);
                    return Ok(None);
                }
            }
        }
    }
}

/// Overwrites the stored row that has `tuple`'s key with `tuple` (an INSERT that won against an
/// existing row becomes an UPDATE). Runs as SQL so that row locking, indexes, other triggers and
/// the UPDATE's own resolution by `mm_resolve` (against the row as it is by then) happen exactly as
/// for a replicated UPDATE. Returns the number of rows updated (0 if the row lost meanwhile).
unsafe fn overwrite(info: &RelInfo, tuple: pg_sys::HeapTuple, tupdesc: pg_sys::TupleDesc) -> u64 {
    // SAFETY: the parameters are the tuple's own values, which outlive the call.
    unsafe {
        info.overwrite
            .execute(&info.parameters(tuple, tupdesc), pg_sys::SPI_OK_UPDATE)
    }
}
