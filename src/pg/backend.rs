//! Facts about this backend and its transaction, read from PostgreSQL's globals, and the
//! callbacks it runs at transaction ends.

use pgrx::pg_sys;

/// This backend's database.
#[inline]
pub fn database_oid() -> u32 {
    // SAFETY: a backend global, set once at connection and never changed afterwards.
    unsafe { pg_sys::MyDatabaseId.to_u32() }
}

/// The current time (`now()` as the clock reads it, not the transaction's start).
#[inline]
pub fn now() -> pg_sys::TimestampTz {
    // SAFETY: reads the system clock; cannot fail.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// The current transaction's start (`now()` in SQL).
#[inline]
pub fn transaction_start() -> pg_sys::TimestampTz {
    // SAFETY: reads a backend global of the current transaction; cannot fail.
    unsafe { pg_sys::GetCurrentTransactionStartTimestamp() }
}

/// The current subtransaction's id.
#[inline]
pub fn subtransaction_id() -> pg_sys::SubTransactionId {
    // SAFETY: reads a backend global of the current transaction; cannot fail.
    unsafe { pg_sys::GetCurrentSubTransactionId() }
}

/// Whether the library is being loaded by `shared_preload_libraries` (the only time shared
/// memory may be requested).
pub fn preloading() -> bool {
    // SAFETY: a postmaster global, only read.
    unsafe { pg_sys::process_shared_preload_libraries_in_progress }
}

/// The replication origin this session applies changes of, and the origin's commit time
/// (`None`: a session of its own, not applying anything).
pub fn session_origin() -> Option<(pg_sys::RepOriginId, pg_sys::TimestampTz)> {
    // SAFETY: backend globals, only read.
    let (origin, time) = unsafe {
        (
            pg_sys::replorigin_session_origin,
            pg_sys::replorigin_session_origin_timestamp,
        )
    };
    (origin != pg_sys::InvalidRepOriginId as pg_sys::RepOriginId).then_some((origin, time))
}

/// The name of replication origin `origin` (`None`: it does not exist).
pub fn origin_name(origin: pg_sys::RepOriginId) -> Option<String> {
    let mut name: *mut std::ffi::c_char = std::ptr::null_mut();
    // SAFETY: a catalog lookup with missing_ok; on success `name` points to a palloc'd,
    // NUL-terminated copy, read before this returns.
    unsafe {
        (pg_sys::replorigin_by_oid(origin, true, &mut name) && !name.is_null()).then(|| {
            std::ffi::CStr::from_ptr(name)
                .to_string_lossy()
                .into_owned()
        })
    }
}

/// Runs `callback` at every end of a transaction of this backend (register once per backend).
pub fn on_transaction_end(callback: pg_sys::XactCallback) {
    // SAFETY: registers a function pointer that lives as long as the library (callers pass a
    // `#[pg_guard]` function of this library); the null argument is what it is called with.
    unsafe { pg_sys::RegisterXactCallback(callback, std::ptr::null_mut()) }
}

/// Whether a transaction callback's `event` ends the transaction (commit, abort or prepare).
pub fn transaction_ends(event: pg_sys::XactEvent::Type) -> bool {
    use pg_sys::XactEvent::*;
    matches!(
        event,
        XACT_EVENT_COMMIT
            | XACT_EVENT_PARALLEL_COMMIT
            | XACT_EVENT_ABORT
            | XACT_EVENT_PARALLEL_ABORT
            | XACT_EVENT_PREPARE
    )
}

/// Runs `callback` at every end of a subtransaction of this backend (register once per backend).
pub fn on_subtransaction_end(callback: pg_sys::SubXactCallback) {
    // SAFETY: as for `on_transaction_end`.
    unsafe { pg_sys::RegisterSubXactCallback(callback, std::ptr::null_mut()) }
}

/// Runs `callback` for every relcache invalidation this backend reads (a relation's OID, or
/// `InvalidOid` for all); register once per backend, from `_PG_init`.
pub fn on_relcache_invalidation(callback: pg_sys::RelcacheCallbackFunction) {
    // SAFETY: as for `on_transaction_end` (PostgreSQL raises once its small table of callbacks
    // is full).
    unsafe { pg_sys::CacheRegisterRelcacheCallback(callback, pg_sys::Datum::from(0)) }
}

/// Whether database `oid` exists.
pub fn database_exists(oid: pg_sys::Oid) -> bool {
    // SAFETY: a syscache existence check by oid; the unused keys are zero, as its callers in
    // PostgreSQL pass them.
    unsafe {
        pg_sys::SearchSysCacheExists(
            pg_sys::SysCacheIdentifier::DATABASEOID as i32,
            pg_sys::Datum::from(oid),
            pg_sys::Datum::from(0),
            pg_sys::Datum::from(0),
            pg_sys::Datum::from(0),
        )
    }
}
