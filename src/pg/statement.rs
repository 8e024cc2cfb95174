//! The statements this backend is running, as its executor runs them (`ExecutorRun` nests: a
//! statement a trigger or a function runs is inside the one that fired it). Two things are read
//! from it:
//!
//! * whether the innermost statement is an `INSERT ... ON CONFLICT DO UPDATE` ([`upsert`]): its
//!   rows' trigger must lock a stored row before PostgreSQL waits for it (`engine::local_insert`);
//! * the end of a statement ([`at_statement_end`]): the key lock a row's trigger took is released
//!   there, when every index entry of the statement's rows exists.
//!
//! Tracked by hooks on `ExecutorRun`, installed when the library is loaded. A library loaded in
//! the middle of a statement (without `shared_preload_libraries`, at the first row of a table with
//! the trigger) has not seen that statement begin: until that transaction ends, a trigger outside
//! any statement it knows of takes it for an upsert (a lookup more, never a lock less), unless the
//! client's command is a COPY (whose rows are plain inserts). COPY and logical replication's apply
//! run no executor statement: they are outside every statement.

use std::cell::{Cell, RefCell};

use pgrx::pg_sys;

/// A running statement: its number (increasing in this backend) and whether it is an upsert.
#[derive(Clone, Copy)]
struct Run {
    id: u64,
    upsert: bool,
}

thread_local! {
    static RUNS: RefCell<Vec<Run>> = const { RefCell::new(Vec::new()) };
    static NEXT_ID: Cell<u64> = const { Cell::new(1) };
    /// The depth of `RUNS` when each open subtransaction began (a statement that failed inside one
    /// never ends: its abort drops what it left).
    static SUBXACT_DEPTHS: RefCell<Vec<(pg_sys::SubTransactionId, usize)>> =
        const { RefCell::new(Vec::new()) };
    /// The library was loaded inside a statement of the current transaction.
    static LOADED_INSIDE: Cell<bool> = const { Cell::new(false) };
    static ON_END: Cell<Option<fn(u64)>> = const { Cell::new(None) };
}

static mut PREVIOUS_RUN: pg_sys::ExecutorRun_hook_type = None;

/// Installs the hooks (once, from `_PG_init`).
pub fn init() {
    // SAFETY: `_PG_init` runs once per process before any statement of this library; the previous
    // hook is kept and called, as every extension chaining a hook does.
    unsafe {
        PREVIOUS_RUN = pg_sys::ExecutorRun_hook;
        pg_sys::ExecutorRun_hook = Some(executor_run);
    }
    super::backend::on_transaction_end(Some(at_transaction_end));
    super::backend::on_subtransaction_end(Some(at_subtransaction_end));
    if !super::backend::preloading() {
        LOADED_INSIDE.set(true);
    }
}

/// `f` runs at the end of every statement, with the statement's number: every statement whose
/// number is at least that has ended (one set per backend; the key lock's).
pub fn at_statement_end(f: fn(u64)) {
    ON_END.set(Some(f));
}

/// The number of the innermost statement running (`None`: none, as in COPY and in apply).
pub fn current() -> Option<u64> {
    RUNS.with(|r| r.borrow().last().map(|run| run.id))
}

/// Whether the innermost statement running is an `INSERT ... ON CONFLICT DO UPDATE` (its own,
/// or one in a `WITH` of it), or may be one (see the module's doc).
pub fn upsert() -> bool {
    match RUNS.with(|r| r.borrow().last().copied()) {
        Some(run) => run.upsert,
        None => LOADED_INSIDE.get() && !client_copy(),
    }
}

/// Whether the client's command running is a COPY.
fn client_copy() -> bool {
    // SAFETY: the active portal, when set, is valid while its command runs.
    unsafe {
        let portal = pg_sys::ActivePortal;
        !portal.is_null() && (*portal).commandTag == pg_sys::CommandTag::CMDTAG_COPY
    }
}

/// Whether `plan` is an INSERT with `ON CONFLICT DO UPDATE`.
///
/// # Safety
/// `plan` is null or a valid plan node.
unsafe fn is_upsert(plan: *const pg_sys::Plan) -> bool {
    // SAFETY: a non-null plan node starts with its tag; a ModifyTable tag says what it is.
    unsafe {
        !plan.is_null()
            && (*plan).type_ == pg_sys::NodeTag::T_ModifyTable
            && (*(plan as *const pg_sys::ModifyTable)).onConflictAction
                == pg_sys::OnConflictAction::ONCONFLICT_UPDATE
    }
}

/// Whether the statement of `query` has an INSERT with `ON CONFLICT DO UPDATE` (at its top, or
/// in a `WITH`, whose plans are among its subplans).
///
/// # Safety
/// `query` is the valid `QueryDesc` the executor runs.
unsafe fn has_upsert(query: *const pg_sys::QueryDesc) -> bool {
    // SAFETY: a running statement's plan and its subplan list are valid (`# Safety`).
    unsafe {
        let stmt = (*query).plannedstmt;
        if stmt.is_null() {
            return false;
        }
        if is_upsert((*stmt).planTree) {
            return true;
        }
        if !(*stmt).hasModifyingCTE || (*stmt).subplans.is_null() {
            return false;
        }
        let list = (*stmt).subplans;
        (0..(*list).length as usize)
            .any(|i| is_upsert((*(*list).elements.add(i)).ptr_value as *const pg_sys::Plan))
    }
}

/// A statement begins: its number.
///
/// # Safety
/// `query` is the valid `QueryDesc` the executor runs.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn statement_begins(query: *mut pg_sys::QueryDesc) -> u64 {
    let id = NEXT_ID.get();
    NEXT_ID.set(id + 1);
    // SAFETY: the executor calls the hook with the statement it runs (`# Safety`).
    let upsert = unsafe { has_upsert(query) };
    RUNS.with(|r| r.borrow_mut().push(Run { id, upsert }));
    id
}

/// Statement `id` has ended (and any left inside it by an error caught without an abort).
#[pgrx::pg_guard]
extern "C-unwind" fn statement_ends(id: u64) {
    RUNS.with(|r| {
        let mut runs = r.borrow_mut();
        while runs.last().is_some_and(|run| run.id >= id) {
            runs.pop();
        }
    });
    if let Some(f) = ON_END.get() {
        f(id);
    }
}

// The executor's own entry point, called without pgrx's error boundary: an error raised inside the
// statement must reach the caller's handler exactly as PostgreSQL raised it (with its context,
// position and fields), not caught and raised again. So the hooks below hold nothing to drop (an
// error jumps over their frames), and do their work in the two guarded functions above. A
// statement an error ends is dropped from the list when its (sub)transaction aborts.
extern "C-unwind" {
    #[cfg(not(feature = "pg18"))]
    #[link_name = "standard_ExecutorRun"]
    fn standard_executor_run(
        query: *mut pg_sys::QueryDesc,
        direction: pg_sys::ScanDirection::Type,
        count: u64,
        execute_once: bool,
    );
    #[cfg(feature = "pg18")]
    #[link_name = "standard_ExecutorRun"]
    fn standard_executor_run(
        query: *mut pg_sys::QueryDesc,
        direction: pg_sys::ScanDirection::Type,
        count: u64,
    );
}

#[cfg(not(feature = "pg18"))]
unsafe extern "C-unwind" fn executor_run(
    query: *mut pg_sys::QueryDesc,
    direction: pg_sys::ScanDirection::Type,
    count: u64,
    execute_once: bool,
) {
    // SAFETY: the executor's own arguments, passed on unchanged to the previous hook or the
    // standard executor; the frame holds only plain values (see above).
    unsafe {
        let id = statement_begins(query);
        match PREVIOUS_RUN {
            Some(previous) => previous(query, direction, count, execute_once),
            None => standard_executor_run(query, direction, count, execute_once),
        }
        statement_ends(id);
    }
}

#[cfg(feature = "pg18")]
unsafe extern "C-unwind" fn executor_run(
    query: *mut pg_sys::QueryDesc,
    direction: pg_sys::ScanDirection::Type,
    count: u64,
) {
    // SAFETY: as above.
    unsafe {
        let id = statement_begins(query);
        match PREVIOUS_RUN {
            Some(previous) => previous(query, direction, count),
            None => standard_executor_run(query, direction, count),
        }
        statement_ends(id);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn at_transaction_end(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    if super::backend::transaction_ends(event) {
        // A statement that failed never ended; a holdable cursor's ends after the commit.
        if matches!(event, XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT) {
            RUNS.with(|r| r.borrow_mut().clear());
        }
        SUBXACT_DEPTHS.with(|d| d.borrow_mut().clear());
        LOADED_INSIDE.set(false);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn at_subtransaction_end(
    event: pg_sys::SubXactEvent::Type,
    subxact: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    match event {
        SUBXACT_EVENT_START_SUB => {
            let depth = RUNS.with(|r| r.borrow().len());
            SUBXACT_DEPTHS.with(|d| d.borrow_mut().push((subxact, depth)));
        }
        SUBXACT_EVENT_COMMIT_SUB | SUBXACT_EVENT_ABORT_SUB => {
            let depth = SUBXACT_DEPTHS.with(|d| {
                let mut depths = d.borrow_mut();
                let at = depths.iter().rposition(|(id, _)| *id == subxact)?;
                let depth = depths[at].1;
                depths.truncate(at);
                Some(depth)
            });
            if let (SUBXACT_EVENT_ABORT_SUB, Some(depth)) = (event, depth) {
                RUNS.with(|r| r.borrow_mut().truncate(depth));
            }
        }
        _ => {}
    }
}
