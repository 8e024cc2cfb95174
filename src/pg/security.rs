//! Running a piece of work with another role's rights, the way PostgreSQL's own maintenance
//! commands do (VACUUM, CREATE INDEX, REFRESH MATERIALIZED VIEW run index expressions as the
//! table's owner): the role switched, a `SECURITY_RESTRICTED_OPERATION`, and `search_path`
//! pinned to `pg_catalog, pg_temp`, so that nothing the caller created or set (an operator of its
//! own in a schema early in its `search_path`, a `SET ROLE`, a temporary object) can run with the
//! rights lent.
//!
//! Every statement mm_conflict runs with rights other than the caller's goes through
//! [`as_user`]; the statements themselves are schema-qualified too (relations, functions, and
//! operators as `OPERATOR(pg_catalog.=)` or the key's own operator class), so the pinned path is
//! a second wall, not the only one.

use std::ffi::CStr;

use pgrx::pg_sys;

use super::settings::{with_settings, SAFE_SEARCH_PATH};

/// Puts back the role and security context that were current on entry, also when the work
/// raises an error (PostgreSQL restores them at (sub)transaction abort as well).
struct Restore {
    user: pg_sys::Oid,
    context: i32,
}

impl Drop for Restore {
    fn drop(&mut self) {
        // SAFETY: puts back the role and context read on entry; it does not raise.
        unsafe { pg_sys::SetUserIdAndSecContext(self.user, self.context) }
    }
}

/// True when the session's `search_path` already resolves nothing but `pg_catalog` for
/// functions and operators: the pinned value, or the empty one apply workers run with.
fn search_path_is_safe() -> bool {
    // SAFETY: namespace_search_path is the GUC's C string, valid while the backend runs.
    unsafe {
        let current = pg_sys::namespace_search_path;
        if current.is_null() {
            return false;
        }
        let current = CStr::from_ptr(current).to_bytes();
        current.is_empty() || current == SAFE_SEARCH_PATH.to_bytes()
    }
}

/// Runs `f` as role `role` (for permission checks) in a security-restricted operation with the
/// search path pinned, then restores the current role, security context and search path, also
/// when `f` raises an error. Used for what mm_conflict writes on the side (tombstones and conflict
/// log rows, as the extension's owner) and for its own writes to a user table (as that table's
/// owner, as PostgreSQL 16's apply workers write).
pub fn as_user<R>(role: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    let (mut user, mut context) = (pg_sys::InvalidOid, 0);
    // SAFETY: reads and sets the backend's current role; SECURITY_LOCAL_USERID_CHANGE marks the
    // change as local (as SECURITY DEFINER does) and SECURITY_RESTRICTED_OPERATION forbids what a
    // maintenance command forbids (SET ROLE, temporary objects, ...) to code running with it.
    let _restore = unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(
            role,
            context
                | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
        Restore { user, context }
    };
    with_safe_search_path(f)
}

/// Runs `f` (as the current role) with the search path pinned: for statements mm_conflict runs
/// with the caller's own rights, whose meaning must not depend on the caller's objects either.
pub fn with_safe_search_path<R>(f: impl FnOnce() -> R) -> R {
    if search_path_is_safe() {
        f()
    } else {
        with_settings(&[(c"search_path", SAFE_SEARCH_PATH)], f)
    }
}

/// The owner of relation `relid`; the current role when there is no such relation (a statement
/// run as it then fails on its own, naming the relation).
pub fn relation_owner(relid: pg_sys::Oid) -> pg_sys::Oid {
    // SAFETY: a syscache lookup inside a transaction; the tuple is released here; GetUserId reads
    // the current role.
    unsafe {
        let tuple = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::RELOID as i32,
            pg_sys::Datum::from(relid),
        );
        if tuple.is_null() {
            return pg_sys::GetUserId();
        }
        let owner = (*(pg_sys::GETSTRUCT(tuple) as *const pg_sys::FormData_pg_class)).relowner;
        pg_sys::ReleaseSysCache(tuple);
        owner
    }
}

/// Whether the current role is a superuser.
pub fn is_superuser() -> bool {
    // SAFETY: a catalog lookup of the current role; everything that calls it runs inside a
    // transaction (SQL-callable functions and triggers).
    unsafe { pg_sys::superuser() }
}

/// `42501` naming `function` unless the current role is a superuser.
pub fn require_superuser(function: &str) -> Result<(), crate::error::MmError> {
    if is_superuser() {
        Ok(())
    } else {
        Err(crate::error::MmError::NotSuperuser {
            function: function.into(),
        })
    }
}
