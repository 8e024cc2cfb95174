//! Conflict visibility: every replicated change the trigger resolves is counted per table, and each
//! conflict among them is reported as `mm_conflict.log_conflicts` says (a server-log line, a row in
//! `mm_conflict.conflict_log`, or nothing).
//!
//! Counters are cheap: a change adds to a backend-local tally, which is added to shared memory once
//! per committed transaction (an aborted apply transaction is applied again, so counting at commit
//! counts each change once). The shared table needs `shared_preload_libraries`; without it the
//! counters are "not available", while logging works.

use std::cell::{Cell, RefCell};
use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, Ordering};

use mm_conflict_core::version::format_micros;
use mm_conflict_core::{Decision, Version};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgLwLock, PgSqlErrorCode};
use serde_json::{Map, Value};

use crate::gucs::{self, LogConflicts};
use crate::relinfo::{self, RelInfo};
use crate::scoped_flag::ScopedFlag;
use crate::spi::{text_datum, CachedPlan};

/// One counter per decision, then the conflicts among them.
const COUNTERS: usize = Decision::ALL.len() + 1;
const CONFLICTS: usize = Decision::ALL.len();
/// Tables counted per cluster (all databases); 1024 × 72 bytes of shared memory.
const SLOTS: usize = 1024;
/// Longest value (in characters) of a row shown in a log line.
const LOG_VALUE_CHARS: usize = 64;

#[derive(Clone, Copy)]
#[repr(C)]
struct Slot {
    database: u32,
    /// 0: free.
    relid: u32,
    /// When counting began for this table (creation or reset), PostgreSQL microseconds.
    since: i64,
    counts: [u64; COUNTERS],
}

const FREE: Slot = Slot {
    database: 0,
    relid: 0,
    since: 0,
    counts: [0; COUNTERS],
};

#[derive(Clone, Copy)]
#[repr(C)]
struct SharedCounters {
    slots: [Slot; SLOTS],
}

// SAFETY: plain old data (integers only), no pointers: valid in every process that maps it.
unsafe impl PGRXSharedMemory for SharedCounters {}

// SAFETY: the name is unique to this extension.
static SHARED: PgLwLock<SharedCounters> = unsafe { PgLwLock::new(c"mm_conflict_counters") };
/// Set in the postmaster when loaded by `shared_preload_libraries`; inherited by every backend.
static SHARED_READY: AtomicBool = AtomicBool::new(false);

/// Changes counted in one table by one subtransaction, not yet committed.
struct Pending {
    relid: pg_sys::Oid,
    subxact: pg_sys::SubTransactionId,
    counts: [u64; COUNTERS],
}

thread_local! {
    /// This transaction's tallies, per table and subtransaction (rarely more than one entry).
    static PENDING: RefCell<Vec<Pending>> = const { RefCell::new(Vec::new()) };
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
    /// Set while a replicated INSERT is being converted into an UPDATE: that UPDATE's resolution is
    /// part of the INSERT's, which reports it.
    static CONVERTING: Cell<bool> = const { Cell::new(false) };
    static LOG_INSERT: RefCell<Option<CachedPlan>> = const { RefCell::new(None) };
}

/// Requests the shared counters; only has an effect while `shared_preload_libraries` are loaded.
pub fn init() {
    // SAFETY: a read of a postmaster global during library load.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        pg_shmem_init!(
            SHARED = SharedCounters {
                slots: [FREE; SLOTS]
            }
        );
        SHARED_READY.store(true, Ordering::Relaxed);
    }
}

fn shared_ready() -> bool {
    SHARED_READY.load(Ordering::Relaxed)
}

/// A row as the report needs it: a heap tuple, or its live columns' values (statement parameters).
#[derive(Clone, Copy)]
pub enum Row<'a> {
    Tuple(pg_sys::HeapTuple),
    Values(&'a [Option<pg_sys::Datum>]),
}

/// What one resolution looked like. `stored` is the row's or the tombstone's version (`None`: the
/// key had neither); `incoming` the replicated row's or tombstone's.
pub struct Resolution<'a> {
    pub decision: Decision,
    pub stored: Option<Version>,
    pub stored_row: Option<Row<'a>>,
    pub incoming: Version,
    pub incoming_row: Option<Row<'a>>,
}

/// Marks the UPDATE that carries out an INSERT's conversion (see `CONVERTING`).
pub struct Converting;

impl Converting {
    pub fn start() -> ScopedFlag {
        ScopedFlag::raise(&CONVERTING)
    }

    pub fn active() -> bool {
        CONVERTING.with(|c| c.get())
    }
}

/// True when a conflict would be written somewhere: the caller may skip copying rows otherwise.
pub fn rows_wanted() -> bool {
    gucs::LOG_CONFLICTS.get() != LogConflicts::Off
}

/// Counts a resolution and, if it is a conflict, reports it as `log_conflicts` says.
///
/// # Safety
/// The rows are of `info`'s relation, described by `tupdesc`; runs inside the trigger's transaction.
pub unsafe fn report(info: &RelInfo, tupdesc: pg_sys::TupleDesc, r: &Resolution) {
    let conflict = r.decision.is_conflict(r.stored.as_ref(), &r.incoming);
    count(info.relid, r.decision, conflict);
    if !conflict {
        return;
    }
    match gucs::LOG_CONFLICTS.get() {
        LogConflicts::Off => {}
        // SAFETY: forwarded from the caller.
        LogConflicts::Log => unsafe { log_line(info, tupdesc, r) },
        LogConflicts::Table => unsafe { log_row(info, tupdesc, r) },
    }
}

fn count(relid: pg_sys::Oid, decision: Decision, conflict: bool) {
    if !CALLBACK_REGISTERED.with(|c| c.replace(true)) {
        // SAFETY: registers plain functions once per backend; they live as long as the library.
        unsafe {
            pg_sys::RegisterXactCallback(Some(at_transaction_end), std::ptr::null_mut());
            pg_sys::RegisterSubXactCallback(Some(at_subtransaction_end), std::ptr::null_mut());
        }
    }
    // SAFETY: reads the running subtransaction's id.
    let subxact = unsafe { pg_sys::GetCurrentSubTransactionId() };
    PENDING.with(|p| {
        let mut pending = p.borrow_mut();
        let entry = match pending
            .iter()
            .position(|e| e.relid == relid && e.subxact == subxact)
        {
            Some(i) => &mut pending[i],
            None => {
                pending.push(Pending {
                    relid,
                    subxact,
                    counts: [0; COUNTERS],
                });
                pending.last_mut().expect("just pushed")
            }
        };
        entry.counts[decision.index()] += 1;
        if conflict {
            entry.counts[CONFLICTS] += 1;
        }
    });
}

#[pg_guard]
unsafe extern "C-unwind" fn at_transaction_end(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT | XACT_EVENT_PREPARE => {
            // Cleared in place: the vector keeps its capacity for the next transaction.
            PENDING.with(|p| {
                let mut pending = p.borrow_mut();
                if !pending.is_empty() && shared_ready() {
                    add_to_shared(&pending);
                }
                pending.clear();
            });
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => PENDING.with(|p| p.borrow_mut().clear()),
        _ => {}
    }
}

/// A rolled-back subtransaction (a savepoint, or a streamed subtransaction an apply worker aborts)
/// takes its counts with it, and those of the subtransactions inside it, which have higher ids.
#[pg_guard]
unsafe extern "C-unwind" fn at_subtransaction_end(
    event: pg_sys::SubXactEvent::Type,
    subxact: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        PENDING.with(|p| p.borrow_mut().retain(|e| e.subxact < subxact));
    }
}

fn slot_index(database: u32, relid: u32) -> usize {
    let h = (u64::from(database) << 32 | u64::from(relid)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> 32) as usize % SLOTS
}

/// The slot of (database, relid), claiming a free one if needed; `None` when the table is full.
fn find_slot(shared: &mut SharedCounters, database: u32, relid: u32, now: i64) -> Option<usize> {
    let start = slot_index(database, relid);
    for step in 0..SLOTS {
        let i = (start + step) % SLOTS;
        let slot = &mut shared.slots[i];
        if slot.relid == 0 {
            *slot = Slot {
                database,
                relid,
                since: now,
                counts: [0; COUNTERS],
            };
            return Some(i);
        }
        if slot.database == database && slot.relid == relid {
            return Some(i);
        }
    }
    None
}

fn add_to_shared(pending: &[Pending]) {
    // SAFETY: reads of backend globals.
    let (database, now) = unsafe { (pg_sys::MyDatabaseId.to_u32(), pg_sys::GetCurrentTimestamp()) };
    let mut shared = SHARED.exclusive();
    for entry in pending {
        // A full table drops the counts of tables it has no slot for; conflict_stats says so.
        if let Some(i) = find_slot(&mut shared, database, entry.relid.to_u32(), now) {
            for (total, add) in shared.slots[i].counts.iter_mut().zip(&entry.counts) {
                *total += add;
            }
        }
    }
}

// ---- reports ----------------------------------------------------------------------------------

/// The row's live columns as a JSON object; `only` restricts it to these attribute numbers.
unsafe fn row_json(
    info: &RelInfo,
    tupdesc: pg_sys::TupleDesc,
    row: Row,
    only: Option<&[pg_sys::AttrNumber]>,
) -> Value {
    // SAFETY: forwarded from the caller.
    let values = match row {
        Row::Tuple(tuple) => unsafe { info.parameters(tuple, tupdesc) },
        Row::Values(values) => values.to_vec(),
    };
    let mut object = Map::new();
    for (&attnum, value) in info.live_attnums.iter().zip(values) {
        if only.is_some_and(|only| !only.contains(&attnum)) {
            continue;
        }
        // SAFETY: attnum is a live column of this descriptor; value is that column's datum.
        unsafe {
            let att = &relinfo::attrs(tupdesc)[attnum as usize - 1];
            let name = CStr::from_ptr(att.attname.data.as_ptr())
                .to_string_lossy()
                .into_owned();
            object.insert(
                name,
                value.map_or(Value::Null, |d| datum_json(att.atttypid, d)),
            );
        }
    }
    Value::Object(object)
}

/// A column value as JSON: booleans, integers, finite floats and json/jsonb as themselves, dates
/// and times in ISO 8601 (as `to_jsonb` writes them), every other type as its text output.
unsafe fn datum_json(typid: pg_sys::Oid, datum: pg_sys::Datum) -> Value {
    match typid {
        pg_sys::BOOLOID => return Value::Bool(datum.value() != 0),
        pg_sys::INT2OID => return Value::from(datum.value() as i16),
        pg_sys::INT4OID => return Value::from(datum.value() as i32),
        pg_sys::INT8OID => return Value::from(datum.value() as i64),
        pg_sys::DATEOID
        | pg_sys::TIMEOID
        | pg_sys::TIMETZOID
        | pg_sys::TIMESTAMPOID
        | pg_sys::TIMESTAMPTZOID => {
            // SAFETY: json's own ISO 8601 encoder for these types (as to_jsonb uses), palloc'd.
            return unsafe {
                let cstr = pg_sys::JsonEncodeDateTime(
                    std::ptr::null_mut(),
                    datum,
                    typid,
                    std::ptr::null(),
                );
                Value::String(CStr::from_ptr(cstr).to_string_lossy().into_owned())
            };
        }
        _ => {}
    }
    // SAFETY: the output function of the value's own type.
    let text = unsafe {
        let (mut output, mut is_varlena) = (pg_sys::InvalidOid, false);
        pg_sys::getTypeOutputInfo(typid, &mut output, &mut is_varlena);
        let cstr = pg_sys::OidOutputFunctionCall(output, datum);
        let text = CStr::from_ptr(cstr).to_string_lossy().into_owned();
        pg_sys::pfree(cstr.cast());
        text
    };
    match typid {
        pg_sys::FLOAT4OID | pg_sys::FLOAT8OID => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::String(text), Value::Number),
        pg_sys::JSONOID | pg_sys::JSONBOID => {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        }
        _ => Value::String(text),
    }
}

/// Shortens every string in `value` to `max` characters (marking the cut with "…").
fn truncate_strings(value: &mut Value, max: usize) {
    match value {
        Value::String(s) if s.chars().count() > max => {
            let cut: String = s.chars().take(max).collect();
            *s = cut + "…";
        }
        Value::Array(items) => items.iter_mut().for_each(|v| truncate_strings(v, max)),
        Value::Object(map) => map.values_mut().for_each(|v| truncate_strings(v, max)),
        _ => {}
    }
}

/// The key (primary-key columns) as JSON, from whichever row the resolution has.
unsafe fn key_json(info: &RelInfo, tupdesc: pg_sys::TupleDesc, r: &Resolution) -> Value {
    let key_attnums: Vec<_> = info
        .primary_key
        .iter()
        .flat_map(|pk| pk.columns.iter().map(|c| c.attnum))
        .collect();
    match r.incoming_row.or(r.stored_row) {
        // SAFETY: forwarded from the caller.
        Some(row) => unsafe { row_json(info, tupdesc, row, Some(&key_attnums)) },
        None => Value::Null,
    }
}

/// The replication origin of this session: its name (`pg_<subscription oid>` for a subscription).
fn origin_name() -> Option<String> {
    // SAFETY: reads the session's origin; the name is palloc'd by replorigin_by_oid.
    unsafe {
        let origin = pg_sys::replorigin_session_origin;
        let mut name: *mut std::ffi::c_char = std::ptr::null_mut();
        (origin != pg_sys::InvalidRepOriginId as pg_sys::RepOriginId
            && pg_sys::replorigin_by_oid(origin, true, &mut name)
            && !name.is_null())
        .then(|| CStr::from_ptr(name).to_string_lossy().into_owned())
    }
}

fn describe(version: Option<&Version>, column: &str) -> String {
    match version {
        Some(v) => format!(
            "{column} {}, node {}",
            v.criterion
                .map_or_else(|| "NULL".into(), |t| format_micros(t) + "+00"),
            v.node.map_or_else(|| "NULL".into(), |n| n.to_string())
        ),
        None => "none".into(),
    }
}

unsafe fn log_line(info: &RelInfo, tupdesc: pg_sys::TupleDesc, r: &Resolution) {
    // SAFETY: forwarded from the caller.
    let (key, rows) = unsafe {
        let row = |row: Option<Row>| {
            row.map_or(Value::Null, |row| {
                let mut json = row_json(info, tupdesc, row, None);
                truncate_strings(&mut json, LOG_VALUE_CHARS);
                json
            })
        };
        let mut key = key_json(info, tupdesc, r);
        truncate_strings(&mut key, LOG_VALUE_CHARS);
        (key, [row(r.stored_row), row(r.incoming_row)])
    };
    let column = info.policy.criterion_column();
    let message = format!(
        "mm_conflict: conflict on {} key {key}: {} (stored: {}; incoming: {}; origin {}); stored row {}; incoming row {}",
        info.table,
        r.decision.name(),
        describe(r.stored.as_ref(), column),
        describe(Some(&r.incoming), column),
        origin_name().unwrap_or_else(|| "none".into()),
        rows[0],
        rows[1],
    );
    ErrorReport::new(
        PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
        message,
        "mm_resolve",
    )
    .report(gucs::log_level());
}

unsafe fn log_row(info: &RelInfo, tupdesc: pg_sys::TupleDesc, r: &Resolution) {
    // SAFETY: forwarded from the caller.
    let (key, stored_row, incoming_row) = unsafe {
        let row = |row: Option<Row>| row.map(|row| row_json(info, tupdesc, row, None).to_string());
        (
            key_json(info, tupdesc, r).to_string(),
            row(r.stored_row),
            row(r.incoming_row),
        )
    };
    let text = |s: &str| text_datum(s.as_bytes());
    let criterion = |v: Option<&Version>| v.and_then(|v| v.criterion).map(pg_sys::Datum::from);
    let node = |v: Option<&Version>| v.and_then(|v| v.node).map(pg_sys::Datum::from);
    let values = [
        Some(text(&info.table)),
        Some(text(&key)),
        Some(text(r.decision.name())),
        Some(text(info.policy.criterion_column())),
        criterion(r.stored.as_ref()),
        node(r.stored.as_ref()),
        criterion(Some(&r.incoming)),
        node(Some(&r.incoming)),
        stored_row.as_deref().map(text),
        incoming_row.as_deref().map(text),
        origin_name().as_deref().map(text),
    ];
    LOG_INSERT.with(|plan| {
        let mut plan = plan.borrow_mut();
        let plan = plan.get_or_insert_with(|| {
            CachedPlan::new(
                "INSERT INTO mm_conflict.conflict_log (table_name, key, decision, criterion, \
                 stored_value, stored_node, incoming_value, incoming_node, stored_row, incoming_row, \
                 origin, subscription) \
                 VALUES ($1, $2::jsonb, $3, $4, $5, $6, $7, $8, $9::jsonb, $10::jsonb, $11, \
                 (SELECT s.subname FROM pg_catalog.pg_subscription s WHERE 'pg_' || s.oid = $11))"
                    .into(),
                vec![
                    pg_sys::TEXTOID,
                    pg_sys::TEXTOID,
                    pg_sys::TEXTOID,
                    pg_sys::TEXTOID,
                    pg_sys::TIMESTAMPTZOID,
                    pg_sys::INT2OID,
                    pg_sys::TIMESTAMPTZOID,
                    pg_sys::INT2OID,
                    pg_sys::TEXTOID,
                    pg_sys::TEXTOID,
                    pg_sys::TEXTOID,
                ],
            )
        });
        // SAFETY: the values match the argument types; we run inside the trigger's transaction.
        unsafe { plan.execute(&values, pg_sys::SPI_OK_INSERT) };
    });
}

// ---- SQL functions --------------------------------------------------------------------------

#[pg_schema]
pub mod mm_conflict {
    use super::*;

    /// 'ok', 'not_loaded' (no shared_preload_libraries) or 'full' (no free counter slot).
    #[pg_extern(volatile, parallel_safe)]
    fn _conflict_counters_state() -> &'static str {
        if !shared_ready() {
            return "not_loaded";
        }
        let shared = SHARED.share();
        if shared.slots.iter().all(|s| s.relid != 0) {
            "full"
        } else {
            "ok"
        }
    }

    /// This database's counters, one row per table counted since the last reset.
    #[pg_extern(volatile, parallel_safe)]
    fn _conflict_counters() -> TableIterator<
        'static,
        (
            name!(relid, pg_sys::Oid),
            name!(applied, i64),
            name!(kept_local, i64),
            name!(inserts_converted, i64),
            name!(deletes_applied, i64),
            name!(deletes_skipped, i64),
            name!(duplicates_dropped, i64),
            name!(conflicts, i64),
            name!(counting_since, Option<TimestampWithTimeZone>),
        ),
    > {
        let mut rows = Vec::new();
        if shared_ready() {
            // SAFETY: a read of a backend global.
            let database = unsafe { pg_sys::MyDatabaseId.to_u32() };
            let shared = SHARED.share();
            for slot in shared.slots.iter() {
                if slot.relid != 0 && slot.database == database {
                    let c = slot.counts.map(|n| n as i64);
                    let since = TimestampWithTimeZone::try_from(slot.since).ok();
                    rows.push((
                        pg_sys::Oid::from(slot.relid),
                        c[0],
                        c[1],
                        c[2],
                        c[3],
                        c[4],
                        c[5],
                        c[6],
                        since,
                    ));
                }
            }
        }
        TableIterator::new(rows)
    }

    /// Zeroes this database's counters: of one table, or (NULL) of all its tables.
    #[pg_extern(volatile, parallel_safe)]
    fn _reset_conflict_counters(relid: Option<pg_sys::Oid>) {
        if !shared_ready() {
            ErrorReport::new(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "mm_conflict's conflict counters are not available",
                "mm_conflict.reset_conflict_stats",
            )
            .set_detail("They live in shared memory, which an extension gets only when loaded at server start.")
            .set_hint("Add mm_conflict to shared_preload_libraries in postgresql.conf and restart the server.")
            .report(PgLogLevel::ERROR);
        }
        // SAFETY: reads of backend globals.
        let (database, now) =
            unsafe { (pg_sys::MyDatabaseId.to_u32(), pg_sys::GetCurrentTimestamp()) };
        let mut shared = SHARED.exclusive();
        match relid {
            Some(relid) => {
                if let Some(slot) = shared
                    .slots
                    .iter_mut()
                    .find(|s| s.database == database && s.relid == relid.to_u32())
                {
                    slot.counts = [0; COUNTERS];
                    slot.since = now;
                }
            }
            None => {
                // Free this database's slots and re-insert the others (open addressing needs
                // unbroken probe chains).
                let kept: Vec<Slot> = shared
                    .slots
                    .iter()
                    .filter(|s| s.relid != 0 && s.database != database)
                    .copied()
                    .collect();
                shared.slots = [FREE; SLOTS];
                for slot in kept {
                    if let Some(i) = find_slot(&mut shared, slot.database, slot.relid, slot.since) {
                        shared.slots[i] = slot;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_marks_the_cut_and_keeps_short_values() {
        let mut v = serde_json::json!({"a": "x".repeat(70), "b": "short", "c": 5, "d": ["ééééé"]});
        truncate_strings(&mut v, 4);
        assert_eq!(
            v,
            serde_json::json!({"a": "xxxx…", "b": "shor…", "c": 5, "d": ["éééé…"]})
        );
    }

    #[test]
    fn slots_are_found_again_and_fill_up() {
        let mut shared = Box::new(SharedCounters {
            slots: [FREE; SLOTS],
        });
        let first = find_slot(&mut shared, 5, 100, 1).unwrap();
        assert_eq!(find_slot(&mut shared, 5, 100, 2), Some(first));
        assert_eq!(shared.slots[first].since, 1);
        for relid in 1..SLOTS as u32 {
            assert!(find_slot(&mut shared, 6, relid, 1).is_some());
        }
        assert_eq!(find_slot(&mut shared, 7, 1, 1), None);
        assert_eq!(find_slot(&mut shared, 6, 1, 1).is_some(), true);
    }
}
