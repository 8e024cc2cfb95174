//! Running a piece of work that may raise an error in a subtransaction of its own, as PL/pgSQL's
//! `EXCEPTION` blocks do: an error rolls back only what the work did, and is returned.

use std::panic::AssertUnwindSafe;

use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::PgTryBuilder;

/// Runs `f` in an internal subtransaction: its value, or the message of the error it raised (the
/// subtransaction is then rolled back: locks, memory and buffer pins it took are released). Rust
/// panics are not caught. What `f` allocates survives in the caller's memory context.
pub fn catching<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    // SAFETY: the subtransaction begun here is released or rolled back before returning, in both
    // cases with the caller's memory context and resource owner put back (as PL/pgSQL's exception
    // blocks do); pgrx has copied and flushed the error data when the catch handler runs.
    unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        let result = PgTryBuilder::new(AssertUnwindSafe(|| Ok(f())))
            .catch_others(|error| match error {
                CaughtError::PostgresError(report) | CaughtError::ErrorReport(report) => {
                    Err(report.message().to_string())
                }
                panic @ CaughtError::RustPanic { .. } => panic.rethrow(),
            })
            .execute();
        if result.is_ok() {
            pg_sys::ReleaseCurrentSubTransaction();
        } else {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
        result
    }
}
