//! Running a piece of work that may raise an error in a subtransaction of its own, as PL/pgSQL's
//! `EXCEPTION` blocks do: an error rolls back only what the work did, and is returned.

use std::panic::AssertUnwindSafe;

use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::PgTryBuilder;

/// An error caught by [`catching_error`]: what re-raising it needs.
pub struct Caught {
    pub state: pgrx::PgSqlErrorCode,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl Caught {
    /// Raises an error with this one's SQLSTATE and hint, and `message` and `detail` instead of
    /// its own. Never returns.
    pub fn raise_as(&self, message: String, detail: Option<String>) -> ! {
        let mut report = pgrx::pg_sys::panic::ErrorReport::new(self.state, message, "mm_conflict");
        if let Some(detail) = detail.filter(|d| !d.is_empty()) {
            report = report.set_detail(detail);
        }
        if let Some(hint) = self.hint.clone().filter(|h| !h.is_empty()) {
            report = report.set_hint(hint);
        }
        report.report(pgrx::PgLogLevel::ERROR);
        unreachable!("ereport(ERROR) returned")
    }
    /// Raises this error again as it was: SQLSTATE, message, detail, hint. Never returns.
    pub fn reraise(&self) -> ! {
        self.raise_as(self.message.clone(), self.detail.clone())
    }
}

/// Runs `f` in an internal subtransaction: its value, or the message of the error it raised (the
/// subtransaction is then rolled back: locks, memory and buffer pins it took are released). Rust
/// panics are not caught. What `f` allocates survives in the caller's memory context.
pub fn catching<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catching_error(f).map_err(|caught| caught.message)
}

/// As [`catching`], with the whole error: SQLSTATE, message, detail, hint.
pub fn catching_error<T>(f: impl FnOnce() -> T) -> Result<T, Caught> {
    in_subtransaction(f, false)
}

/// Runs `f` in an internal subtransaction that is always rolled back (what it changed and the
/// locks it took are gone afterwards): its value, or the error it raised. What `f` allocates in
/// Rust survives.
pub fn rolled_back<T>(f: impl FnOnce() -> T) -> Result<T, Caught> {
    in_subtransaction(f, true)
}

fn in_subtransaction<T>(f: impl FnOnce() -> T, always_roll_back: bool) -> Result<T, Caught> {
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
                    Err(Caught {
                        state: report.sql_error_code(),
                        message: report.message().to_string(),
                        detail: report.detail().map(str::to_string),
                        hint: report.hint().map(str::to_string),
                    })
                }
                panic @ CaughtError::RustPanic { .. } => panic.rethrow(),
            })
            .execute();
        if result.is_ok() && !always_roll_back {
            pg_sys::ReleaseCurrentSubTransaction();
        } else {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
        result
    }
}
