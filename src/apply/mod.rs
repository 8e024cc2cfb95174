//! Runs the engine for what PostgreSQL fires: the `mm_resolve` trigger's rows
//! ([`fire`]) and the tombstone table's triggers ([`tombstone`]). The engine
//! (`mm_conflict_core::engine`) decides the sequence; [`store`] is its store over PostgreSQL; this
//! module turns the engine's actions into the tuple the trigger returns.

pub mod store;
pub mod tombstone;

use std::cell::Cell;

use mm_conflict_core::engine::{self, Action, Local, Refusal};
use mm_conflict_core::stamp::{Clock, Stamps};
use mm_conflict_core::{Criterion, Direction};
use pgrx::pg_sys;

use crate::catalog::relinfo::{self, RelInfo, Row};
use crate::error::MmError;
use crate::gucs;
use crate::pg::flag::ScopedFlag;
use crate::pg::is_replicated_session;
use crate::pg::tuple::TupleRef;
use store::PgStore;

thread_local! {
    /// True during mm_conflict's own writes (see `OwnWrite`).
    static OWN_WRITE: Cell<bool> = const { Cell::new(false) };
    /// Set while a replicated INSERT is being converted into an UPDATE (see `Converting`).
    static CONVERTING: Cell<bool> = const { Cell::new(false) };
}

/// Marks mm_conflict's own writes (a re-send's DELETE + INSERT, the removal of a replaced
/// tombstone) for the life of the guard, so that its triggers let them pass unresolved. Restores
/// the previous state on drop, also when an error unwinds.
pub struct OwnWrite;

impl OwnWrite {
    pub fn start() -> ScopedFlag {
        ScopedFlag::raise(&OWN_WRITE)
    }

    pub fn active() -> bool {
        OWN_WRITE.with(|r| r.get())
    }
}

/// Marks the UPDATE that carries out an INSERT's conversion: that UPDATE's resolution is part of
/// the INSERT's, which reports it.
pub struct Converting;

impl Converting {
    pub fn start() -> ScopedFlag {
        ScopedFlag::raise(&CONVERTING)
    }

    pub fn active() -> bool {
        CONVERTING.with(|c| c.get())
    }
}

pub(crate) fn describe_event(event: u32) -> String {
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

fn local() -> Local {
    let clock = Clock {
        xact_start: crate::pg::backend::transaction_start(),
        wall: crate::pg::backend::now(),
    };
    Local {
        clock,
        mode: gucs::local_conflict_mode(),
    }
}

/// Runs `mm_resolve` for one row: returns the tuple to write, or `None` to skip the row (no new
/// row version, no WAL).
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
    // SAFETY: td and everything it points to is valid during the firing (caller's contract):
    // the relation is open and locked, the trigger is one of its triggers, and the tuples are
    // the relation's, described by its rd_att, valid until the trigger returns (which the store,
    // the rows and `info`'s borrow do not outlast).
    let (info, rel, old, new) = unsafe {
        let info = relinfo::lookup(td.tg_relation, &*td.tg_trigger)?;
        let desc = (*td.tg_relation).rd_att;
        let tuple = |t: pg_sys::HeapTuple| (!t.is_null()).then(|| TupleRef::new(t, desc));
        (
            info,
            td.tg_relation,
            tuple(td.tg_trigtuple),
            tuple(td.tg_newtuple),
        )
    };
    let Some(old) = old else {
        return Err(MmError::WrongTriggerEvent {
            fired: describe_event(event),
        });
    };
    let policy = &info.policy;
    let replicated = is_replicated_session();
    if replicated {
        crate::report::progress::watch();
    }
    let own_write = OwnWrite::active();
    // A replicated INSERT's probe copies the stored row only when a conflict could show it.
    let copy_rows = replicated
        && op == pg_sys::TRIGGER_EVENT_INSERT
        && !own_write
        && crate::report::rows_wanted();
    // SAFETY: rel is open and locked during the firing and described by `info` (looked up for
    // it); `old` is one of its tuples.
    let mut store = unsafe { PgStore::for_tuple(&info, rel, old, copy_rows) };
    let old_row = Row::Tuple(old);
    // An UPDATE has its new tuple (PostgreSQL sets it for UPDATE events only).
    let new_tuple = || new.expect("an UPDATE trigger has its new tuple");
    let (action, written) = match (op, replicated) {
        (pg_sys::TRIGGER_EVENT_INSERT, false) => (
            engine::local_insert(
                &mut store,
                policy,
                local(),
                &old_row,
                crate::pg::statement::upsert(),
            ),
            old,
        ),
        (pg_sys::TRIGGER_EVENT_UPDATE, false) => (
            engine::local_update(
                &mut store,
                policy,
                local(),
                &old_row,
                &Row::Tuple(new_tuple()),
            ),
            new_tuple(),
        ),
        (pg_sys::TRIGGER_EVENT_DELETE, false) => (
            engine::local_delete(&mut store, policy, local(), &old_row),
            old,
        ),
        (pg_sys::TRIGGER_EVENT_INSERT, true) => (
            engine::replicated_insert(&mut store, policy, &old_row, own_write),
            old,
        ),
        (pg_sys::TRIGGER_EVENT_UPDATE, true) => (
            Ok(engine::replicated_update(
                &mut store,
                policy,
                &old_row,
                &Row::Tuple(new_tuple()),
                Converting::active(),
            )),
            new_tuple(),
        ),
        _ => (
            Ok(engine::replicated_delete(
                &mut store, policy, &old_row, own_write,
            )),
            old,
        ),
    };
    let action = action.map_err(|refusal| refused(&info, refusal))?;
    // Delta columns: the state the engine gave the written row, and the sums it holds.
    let delta = match store.take_delta() {
        Some(state) => delta_values(&info, &state)?,
        None => Vec::new(),
    };
    // SAFETY (each arm): `written` and `old` are tuples of `info`'s relation; the values put in
    // are of their columns' types (bookkeeping values, a column's own value fetched in full,
    // delta sums made for their columns by `delta_values`); the results are palloc'd in the
    // trigger's memory context, as PostgreSQL expects of a returned tuple.
    match action {
        // A local UPDATE carries every value of its version, also the large ones it did not
        // change (see `with_bookkeeping`).
        Action::Stamp(stamps) => {
            let mut extra = if op == pg_sys::TRIGGER_EVENT_UPDATE {
                full_values(written)
            } else {
                Vec::new()
            };
            extra.extend(delta);
            Ok(Some(unsafe {
                with_bookkeeping(&info, written, Some(stamps), &extra)
            }))
        }
        Action::Apply if delta.is_empty() => Ok(Some(unsafe { as_replicated(&info, written) })),
        Action::Apply => Ok(Some(unsafe {
            with_bookkeeping(&info, written, None, &delta)
        })),
        // The stored row (its version, its mm_islocal) with the increments it lacked. Like a
        // local UPDATE it carries its large values in full: a peer that takes it as the
        // winner must not keep its own large values of another version.
        Action::Merge => {
            let mut extra = full_values(old);
            extra.extend(delta);
            let (cols, values): (Vec<_>, Vec<_>) = extra.into_iter().unzip();
            Ok(Some(unsafe { old.modified(&cols, &values) }))
        }
        Action::Pass => Ok(Some(written.raw())),
        Action::Skip => Ok(None),
    }
}

/// `tuple`'s values stored out of line, fetched in full (see `with_bookkeeping`).
fn full_values(tuple: TupleRef) -> Vec<(pg_sys::AttrNumber, Option<pg_sys::Datum>)> {
    tuple
        .external_values()
        .into_iter()
        .map(|(attnum, datum)| (attnum, Some(datum)))
        .collect()
}

/// The columns a row with delta state `state` gets: `mm_delta`, and each delta column its sum
/// (`22003` when a sum does not fit the column).
fn delta_values(
    info: &RelInfo,
    state: &mm_conflict_core::Delta,
) -> Result<Vec<(pg_sys::AttrNumber, Option<pg_sys::Datum>)>, MmError> {
    let Some(delta) = &info.delta else {
        return Ok(Vec::new());
    };
    let out_of_range = |column: &str, e: mm_conflict_core::DeltaError| MmError::DeltaOutOfRange {
        table: info.table.clone(),
        column: column.to_string(),
        detail: e.to_string(),
    };
    let sums = state
        .sums(delta.columns.len())
        .map_err(|e| out_of_range(&delta.columns[0].name, e))?;
    let mut values = vec![(
        delta.att_state,
        Some(crate::pg::amount::text_datum(&state.encode())),
    )];
    for (column, sum) in delta.columns.iter().zip(&sums) {
        let datum = column
            .kind
            .datum(sum)
            .map_err(|_| MmError::DeltaOutOfRange {
                table: info.table.clone(),
                column: column.name.clone(),
                detail: format!("The sum of every node's changes is {sum}."),
            })?;
        values.push((column.attnum, Some(datum)));
    }
    Ok(values)
}

/// A TRUNCATE of a replicated table: refused in a local session (it would empty this node only,
/// and a later change of any row could bring it back elsewhere); let through when it arrives
/// from a peer (whose publication sent it: mm_conflict's own never publishes TRUNCATE, so it is
/// not sent on from here).
///
/// # Safety
/// `td` must be the `TriggerData` of a trigger PostgreSQL is firing.
pub unsafe fn truncate(td: &pg_sys::TriggerData) -> Result<(), MmError> {
    if td.tg_event & pg_sys::TRIGGER_EVENT_OPMASK != pg_sys::TRIGGER_EVENT_TRUNCATE
        || td.tg_event & pg_sys::TRIGGER_EVENT_TIMINGMASK != pg_sys::TRIGGER_EVENT_BEFORE
    {
        return Err(MmError::TruncateGuardEvent {
            fired: describe_event(td.tg_event),
        });
    }
    // SAFETY: PostgreSQL keeps the trigger's relation open and locked during the firing.
    let rel = unsafe { crate::pg::relation::Borrowed::new(td.tg_relation) };
    let replicated = crate::catalog::relinfo::has_mm_resolve(&rel);
    // A partition detached from a replicated table keeps the guard but loses mm_resolve: no
    // longer replicated, it may be truncated.
    if is_replicated_session() || !replicated {
        return Ok(());
    }
    Err(MmError::TruncateRefused {
        table: crate::pg::relation::identity(&rel),
    })
}

/// A copy of `tuple` with the bookkeeping columns set: a local write gets `mm_islocal = true`,
/// this node's id and `stamps`; a replicated one (`stamps = None`) only `mm_islocal = false`.
///
/// `full`: values to put in place of on-disk TOAST pointers. Logical replication sends an UPDATE
/// without the large values it left unchanged, and the node that applies it keeps its own value
/// for them, which may belong to another version (another node's concurrent update of that
/// column): the nodes would diverge. A value written anew is stored and sent anew, so a local
/// UPDATE carries every value of its version; the price is rewriting the large values of a row
/// that an UPDATE leaves unchanged (see BENCHMARKS.md).
///
/// # Safety
/// `tuple` is a tuple of `info`'s relation, `full` values of its columns; the result is palloc'd
/// in the current memory context.
unsafe fn with_bookkeeping(
    info: &RelInfo,
    tuple: TupleRef,
    stamps: Option<Stamps>,
    full: &[(pg_sys::AttrNumber, Option<pg_sys::Datum>)],
) -> pg_sys::HeapTuple {
    let mut cols = [info.att_islocal, 0, 0, 0];
    let mut values = [
        Some(pg_sys::Datum::from(stamps.is_some())),
        None,
        None,
        None,
    ];
    let mut n = 1;
    if let Some(s) = stamps {
        cols[1..].copy_from_slice(&[info.att_nodeid, info.att_xacttime, info.att_stattime]);
        values[1..].copy_from_slice(&[
            Some(pg_sys::Datum::from(info.policy.node_id)),
            Some(pg_sys::Datum::from(s.xacttime)),
            Some(pg_sys::Datum::from(s.stattime)),
        ]);
        n = 4;
    }
    // Large values written anew (an UPDATE of a row that has some): a longer list.
    let (all_cols, all_values): (Vec<_>, Vec<_>);
    let (cols, values) = if full.is_empty() {
        (&cols[..n], &values[..n])
    } else {
        all_cols = cols[..n]
            .iter()
            .copied()
            .chain(full.iter().map(|f| f.0))
            .collect();
        all_values = values[..n]
            .iter()
            .copied()
            .chain(full.iter().map(|f| f.1))
            .collect();
        (&all_cols[..], &all_values[..])
    };
    // SAFETY: `full` holds values of `tuple`'s columns (`# Safety`); the att_* were found in the
    // relation by RelInfo::build; `cols`/`values` pair up with the columns' types (boolean,
    // smallint, timestamp(tz) as microseconds, full values of the columns they replace).
    unsafe { tuple.modified(cols, values) }
}

/// `tuple` marked as arrived from a peer (`mm_islocal = false`), copied only if needed.
///
/// # Safety
/// As for [`with_bookkeeping`].
unsafe fn as_replicated(info: &RelInfo, tuple: TupleRef) -> pg_sys::HeapTuple {
    if tuple.get(info.att_islocal).is_some_and(|d| d.value() == 0) {
        return tuple.raw();
    }
    // SAFETY: `tuple` is a tuple of `info`'s relation (`# Safety`).
    unsafe { with_bookkeeping(info, tuple, None, &[]) }
}

/// The error a refusal of the engine raises.
fn refused(info: &RelInfo, refusal: Refusal) -> MmError {
    match refusal {
        Refusal::NoPrimaryKey => MmError::NoPrimaryKey {
            table: info.table.clone(),
        },
        Refusal::Delta(e) => MmError::DeltaOutOfRange {
            table: info.table.clone(),
            column: info
                .delta
                .as_ref()
                .map(|d| {
                    d.columns
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default(),
            detail: e.to_string(),
        },
        Refusal::LocalConflict {
            operation,
            stored,
            written,
        } => {
            let column = info.policy.criterion_column();
            MmError::LocalConflict {
                table: info.table.clone(),
                operation: operation.name().into(),
                detail: format!(
                    "Stored version: {}. This write: {}.",
                    stored.describe(column),
                    written.describe(column)
                ),
                hint: local_conflict_hint(info),
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
            "Under \"first\", the first version of a row wins on every node, so updates and deletes are refused; use \"last\" to let updates win, {escape}"
        ),
    }
}
