//! Reading what is there now, from inside a long call.
//!
//! A Rust function reads under the snapshot of the statement that called it, taken when that
//! statement began. A call that reads, waits for replication and writes in turns (`repair`) must
//! see, at each step, what has committed meanwhile and what it wrote itself, as each statement of
//! a PL/pgSQL function would.

use pgrx::pg_sys;

/// Runs `f` under a new snapshot that sees every change committed before now and every earlier
/// write of this transaction (under `REPEATABLE READ` and `SERIALIZABLE`, the transaction's one
/// snapshot with this transaction's writes so far).
pub fn fresh<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: inside a transaction (every SQL-callable function is). The snapshot pushed here is
    // popped below; when `f` raises, aborting the (sub)transaction unwinds the active snapshot
    // stack.
    unsafe {
        pg_sys::CommandCounterIncrement();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let result = f();
    // SAFETY: pops the snapshot pushed above (`f` leaves the stack as it found it).
    unsafe { pg_sys::PopActiveSnapshot() };
    result
}
