//! Every difference between the PostgreSQL majors that mm_conflict meets, behind one function
//! each, so that the rest of the code is the same on every major (15, 16 and 18 are built and
//! tested; 17 is written for from its published headers but not built here).
//!
//! * A tuple descriptor's attributes: an array field up to 17, `TupleDescAttr()` from 18 (where
//!   the descriptor also carries compact attributes).
//! * `index_beginscan` takes an instrumentation pointer from 18.
//! * The local transaction id of a backend: `PGPROC.lxid` up to 16, `PGPROC.vxid.lxid` from 17.
//! * `AddSubscriptionRelState` (not in pgrx's bindings) takes a `retain_lock` flag from 17.
//! * `LockHeldByMe` takes an `orstronger` flag from 17, `RelationGetPrimaryKeyIndex` a
//!   `deferrable_ok` flag from 18.

use pgrx::pg_sys;

/// The attributes of a tuple descriptor (dropped ones included), in attribute-number order.
///
/// # Safety
/// `tupdesc` must be a valid descriptor that outlives the returned slice.
#[inline]
pub unsafe fn attributes<'a>(tupdesc: pg_sys::TupleDesc) -> &'a [pg_sys::FormData_pg_attribute] {
    // SAFETY: natts bounds the descriptor's attribute array (the caller guarantees a valid
    // descriptor). From 18 on the array follows the natts compact attributes, where
    // `TupleDescAttrAddress` (tupdesc.h) finds it: computed here rather than through pgrx's shim
    // of the inline `TupleDescAttr`, a call the triggers would pay for every tuple they read
    // (debug builds compare both).
    unsafe {
        let natts = (*tupdesc).natts as usize;
        #[cfg(not(feature = "pg18"))]
        {
            (*tupdesc).attrs.as_slice(natts)
        }
        #[cfg(feature = "pg18")]
        {
            if natts == 0 {
                return &[];
            }
            let first = (*tupdesc)
                .compact_attrs
                .as_ptr()
                .add(natts)
                .cast::<pg_sys::FormData_pg_attribute>();
            debug_assert_eq!(first, pg_sys::TupleDescAttr(tupdesc, 0).cast_const());
            std::slice::from_raw_parts(first, natts)
        }
    }
}

/// Starts an index scan of `index` (on `heap`) with `nkeys` scan keys under `snapshot`.
///
/// # Safety
/// Both relations must be open and locked; the snapshot valid for the scan's life.
pub unsafe fn index_beginscan(
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    snapshot: pg_sys::Snapshot,
    nkeys: i32,
) -> pg_sys::IndexScanDesc {
    // SAFETY: forwarded to PostgreSQL with the caller's guarantees; no instrumentation.
    unsafe {
        #[cfg(not(feature = "pg18"))]
        {
            pg_sys::index_beginscan(heap, index, snapshot, nkeys, 0)
        }
        #[cfg(feature = "pg18")]
        {
            pg_sys::index_beginscan(heap, index, snapshot, std::ptr::null_mut(), nkeys, 0)
        }
    }
}

/// The oid of `rel`'s primary-key index (deferrable or not), or `InvalidOid`.
///
/// # Safety
/// `rel` must be open.
pub unsafe fn primary_key_index(rel: pg_sys::Relation) -> pg_sys::Oid {
    // SAFETY: `rel` is an open relation (`# Safety`), all RelationGetPrimaryKeyIndex needs to
    // read its relcache index list; the pg18 flag is a plain bool.
    unsafe {
        #[cfg(not(feature = "pg18"))]
        {
            pg_sys::RelationGetPrimaryKeyIndex(rel)
        }
        #[cfg(feature = "pg18")]
        {
            pg_sys::RelationGetPrimaryKeyIndex(rel, true)
        }
    }
}

/// True when this backend holds `tag` in exactly `mode`.
///
/// # Safety
/// `tag` must be a valid lock tag.
pub unsafe fn lock_held_by_me(tag: &pg_sys::LOCKTAG, mode: pg_sys::LOCKMODE) -> bool {
    // SAFETY: a lookup in the backend's local lock table.
    unsafe {
        #[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15", feature = "pg16"))]
        {
            pg_sys::LockHeldByMe(tag, mode)
        }
        #[cfg(any(feature = "pg17", feature = "pg18"))]
        {
            pg_sys::LockHeldByMe(tag, mode, false)
        }
    }
}

/// The query for the `origin` setting of subscription `$1` (no row: no such subscription): `any`
/// or `none` from 16 on; before 16 every subscription takes changes of any origin.
pub fn subscription_origin_query() -> &'static str {
    #[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15"))]
    let query =
        "SELECT 'any'::text FROM pg_catalog.pg_subscription WHERE oid OPERATOR(pg_catalog.=) $1";
    #[cfg(not(any(feature = "pg13", feature = "pg14", feature = "pg15")))]
    let query =
        "SELECT suborigin::text FROM pg_catalog.pg_subscription WHERE oid OPERATOR(pg_catalog.=) $1";
    query
}

/// True in a session that applies changes made elsewhere: an apply or table-sync worker (also a
/// parallel apply worker, from 16), any session that set up a replication origin with
/// `pg_replication_origin_session_setup`, and a repair's writes ([`super::flag::RepairWrite`]).
pub fn is_replicated_session() -> bool {
    // SAFETY: a plain read of a backend-local global.
    let origin = unsafe {
        pg_sys::replorigin_session_origin != pg_sys::InvalidRepOriginId as pg_sys::RepOriginId
    };
    origin || super::flag::RepairWrite::active()
}

mod subscription_rel {
    use pgrx::pg_sys::{Oid, XLogRecPtr};

    // Not in pgrx's bindings: catalog/pg_subscription_rel.h. A `retain_lock` flag from 17. Called
    // inside `pg_guard_ffi_boundary`, as pgrx's own bindings are.
    unsafe extern "C-unwind" {
        #[cfg(not(any(feature = "pg17", feature = "pg18")))]
        pub fn AddSubscriptionRelState(
            subid: Oid,
            relid: Oid,
            state: std::ffi::c_char,
            sublsn: XLogRecPtr,
        );
        #[cfg(any(feature = "pg17", feature = "pg18"))]
        pub fn AddSubscriptionRelState(
            subid: Oid,
            relid: Oid,
            state: std::ffi::c_char,
            sublsn: XLogRecPtr,
            retain_lock: bool,
        );
    }
}

/// Records that subscription `subid` receives table `relid`, ready (as `ALTER SUBSCRIPTION ...
/// REFRESH PUBLICATION WITH (copy_data = false)` records a table new in the publication), in the
/// calling transaction: the apply worker applies the table's changes from the commit on.
pub fn add_subscription_rel_ready(subid: pg_sys::Oid, relid: pg_sys::Oid) {
    const SUBREL_STATE_READY: std::ffi::c_char = b'r' as std::ffi::c_char;
    // SAFETY: both oids name existing catalog objects (a subscription of this database read from
    // pg_subscription, a table created in this transaction); the function inserts one catalog row
    // under its own locks and raises an error on a duplicate.
    // pg_guard_ffi_boundary turns an ERROR raised inside into a Rust panic that pgrx re-raises.
    unsafe {
        pg_sys::ffi::pg_guard_ffi_boundary(|| {
            #[cfg(not(any(feature = "pg17", feature = "pg18")))]
            subscription_rel::AddSubscriptionRelState(subid, relid, SUBREL_STATE_READY, 0);
            #[cfg(any(feature = "pg17", feature = "pg18"))]
            subscription_rel::AddSubscriptionRelState(subid, relid, SUBREL_STATE_READY, 0, false);
        })
    }
}
