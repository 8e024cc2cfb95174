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
use crate::pg::trigger::Firing;
use crate::pg::tuple::{TupleRef, Value};
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
pub fn fire<'a>(firing: &Firing<'a>) -> Result<Option<TupleRef<'a>>, MmError> {
    let event = firing.event();
    let op = event & pg_sys::TRIGGER_EVENT_OPMASK;
    if event & pg_sys::TRIGGER_EVENT_TIMINGMASK != pg_sys::TRIGGER_EVENT_BEFORE
        || event & pg_sys::TRIGGER_EVENT_ROW == 0
        || op == pg_sys::TRIGGER_EVENT_TRUNCATE
    {
        return Err(MmError::WrongTriggerEvent {
            fired: describe_event(event),
        });
    }
    let rel = firing.relation();
    let info = relinfo::lookup(rel, firing.trigger())?;
    let (Some(old), new) = (firing.row(), firing.new_row()) else {
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
    let mut store = PgStore::for_tuple(&info, rel, old, copy_rows);
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
            Ok(Some(with_bookkeeping(
                firing,
                &info,
                written,
                Some(stamps),
                &extra,
            )))
        }
        Action::Apply if delta.is_empty() => Ok(Some(as_replicated(firing, &info, written))),
        Action::Apply => Ok(Some(with_bookkeeping(firing, &info, written, None, &delta))),
        // The stored row (its version, its mm_islocal) with the increments it lacked. Like a
        // local UPDATE it carries its large values in full: a peer that takes it as the
        // winner must not keep its own large values of another version.
        Action::Merge => {
            let mut extra = full_values(old);
            extra.extend(delta);
            Ok(Some(firing.modified(old, &extra)))
        }
        Action::Pass => Ok(Some(written)),
        Action::Skip => Ok(None),
    }
}

/// `tuple`'s values stored out of line, fetched in full (see `with_bookkeeping`).
fn full_values(tuple: TupleRef) -> Vec<(pg_sys::AttrNumber, Value)> {
    tuple
        .external_values()
        .into_iter()
        .map(|(attnum, value)| (attnum, Value::Typed(value)))
        .collect()
}

/// The columns a row with delta state `state` gets: `mm_delta`, and each delta column its sum
/// (`22003` when a sum does not fit the column).
fn delta_values(
    info: &RelInfo,
    state: &mm_conflict_core::Delta,
) -> Result<Vec<(pg_sys::AttrNumber, Value)>, MmError> {
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
        Value::Typed(crate::pg::amount::text_value(&state.encode())),
    )];
    for (column, sum) in delta.columns.iter().zip(&sums) {
        let value = column
            .kind
            .value(sum)
            .map_err(|_| MmError::DeltaOutOfRange {
                table: info.table.clone(),
                column: column.name.clone(),
                detail: format!("The sum of every node's changes is {sum}."),
            })?;
        values.push((column.attnum, Value::Typed(value)));
    }
    Ok(values)
}

/// A TRUNCATE of a replicated table: refused in a local session (it would empty this node only,
/// and a later change of any row could bring it back elsewhere); let through when it arrives
/// from a peer (whose publication sent it: mm_conflict's own never publishes TRUNCATE, so it is
/// not sent on from here).
pub fn truncate(firing: &Firing) -> Result<(), MmError> {
    let event = firing.event();
    if event & pg_sys::TRIGGER_EVENT_OPMASK != pg_sys::TRIGGER_EVENT_TRUNCATE
        || event & pg_sys::TRIGGER_EVENT_TIMINGMASK != pg_sys::TRIGGER_EVENT_BEFORE
    {
        return Err(MmError::TruncateGuardEvent {
            fired: describe_event(event),
        });
    }
    let rel = firing.relation();
    let replicated = crate::catalog::relinfo::has_mm_resolve(rel);
    // A partition detached from a replicated table keeps the guard but loses mm_resolve: no
    // longer replicated, it may be truncated.
    if is_replicated_session() || !replicated {
        return Ok(());
    }
    Err(MmError::TruncateRefused {
        table: crate::pg::relation::identity(rel),
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
/// The copy is made in the trigger's memory context, as its result.
fn with_bookkeeping<'a>(
    firing: &Firing<'a>,
    info: &RelInfo,
    tuple: TupleRef<'a>,
    stamps: Option<Stamps>,
    full: &[(pg_sys::AttrNumber, Value)],
) -> TupleRef<'a> {
    let mut changes = [(info.att_islocal, Value::Bool(stamps.is_some())); 4];
    let mut n = 1;
    if let Some(s) = stamps {
        changes[1..].copy_from_slice(&[
            (info.att_nodeid, Value::Int2(info.policy.node_id)),
            (info.att_xacttime, Value::Micros(s.xacttime)),
            (info.att_stattime, Value::Micros(s.stattime)),
        ]);
        n = 4;
    }
    if full.is_empty() {
        firing.modified(tuple, &changes[..n])
    } else {
        // Large values written anew (an UPDATE of a row that has some): a longer list.
        let all: Vec<_> = changes[..n].iter().chain(full).copied().collect();
        firing.modified(tuple, &all)
    }
}

/// `tuple` marked as arrived from a peer (`mm_islocal = false`), copied only if needed.
fn as_replicated<'a>(firing: &Firing<'a>, info: &RelInfo, tuple: TupleRef<'a>) -> TupleRef<'a> {
    if tuple.get(info.att_islocal).is_some_and(|d| d.value() == 0) {
        return tuple;
    }
    with_bookkeeping(firing, info, tuple, None, &[])
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
