//! Relations: opening one for a scope, finding one by name, what it is, its live columns, and
//! whether this role may read it.

use std::ffi::{CStr, CString};

use pgrx::{pg_sys, PgRelation};

use super::tuple;

/// A relation held open, and locked, for as long as the value lives: what the functions that
/// read a relation's descriptor, triggers or catalog row take instead of a raw pointer.
///
/// # Safety
/// An implementation returns from `raw` a relation that stays open and locked while `self` lives.
pub unsafe trait Open {
    /// The relation; valid while `self` lives.
    fn raw(&self) -> pg_sys::Relation;
}

// SAFETY: pgrx opens a `regclass` argument with AccessShareLock and closes it on drop.
unsafe impl Open for PgRelation {
    fn raw(&self) -> pg_sys::Relation {
        self.as_ptr()
    }
}

// SAFETY: opened by `Opened::table`/`relation`, closed only when it drops.
unsafe impl Open for Opened {
    fn raw(&self) -> pg_sys::Relation {
        self.raw
    }
}

/// A relation someone else holds open for `'a` (a trigger's, while it fires).
#[derive(Clone, Copy)]
pub struct Borrowed<'a> {
    raw: pg_sys::Relation,
    _open: std::marker::PhantomData<&'a pg_sys::RelationData>,
}

impl<'a> Borrowed<'a> {
    /// # Safety
    /// `raw` is open and locked for as long as the result lives.
    pub unsafe fn new(raw: pg_sys::Relation) -> Self {
        Borrowed {
            raw,
            _open: std::marker::PhantomData,
        }
    }

    /// `rel`, for as long as it is borrowed.
    pub fn of(rel: &'a impl Open) -> Borrowed<'a> {
        Borrowed {
            raw: rel.raw(),
            _open: std::marker::PhantomData,
        }
    }
}

// SAFETY: `Borrowed::new`'s contract.
unsafe impl Open for Borrowed<'_> {
    fn raw(&self) -> pg_sys::Relation {
        self.raw
    }
}

/// The descriptor of an open relation's rows (valid while it is open).
pub fn descriptor(rel: &impl Open) -> pg_sys::TupleDesc {
    // SAFETY: `Open` keeps the relation open while `rel` lives.
    unsafe { (*rel.raw()).rd_att }
}

/// Whether an open relation's main fork has no block (a table never written to, or truncated).
pub fn is_empty(rel: &impl Open) -> bool {
    // SAFETY: `Open` keeps the relation open while `rel` lives.
    unsafe {
        pg_sys::RelationGetNumberOfBlocksInFork(rel.raw(), pg_sys::ForkNumber::MAIN_FORKNUM) == 0
    }
}

/// Schema and name of an open relation.
pub fn names(rel: &impl Open) -> (String, String) {
    // SAFETY: `Open` keeps the relation open while `rel` lives.
    unsafe { super::names::relation_names(rel.raw()) }
}

/// The stable name of an open relation (see [`super::names::identity`]).
pub fn identity(rel: &impl Open) -> String {
    let (schema, name) = names(rel);
    super::names::identity(&schema, &name)
}

/// A table opened with a lock, closed (the lock kept until the transaction ends, as PostgreSQL's
/// own commands keep theirs) when this goes out of scope.
pub struct Opened {
    raw: pg_sys::Relation,
}

impl Opened {
    /// Opens table `relid` with `lock` (`AccessShareLock` to read, `RowExclusiveLock` to write).
    /// A relation that is not a table, or no longer exists, raises PostgreSQL's own error.
    pub fn table(relid: pg_sys::Oid, lock: u32) -> Opened {
        // SAFETY: table_open raises for a missing relation or one that is not a table, and
        // otherwise returns an open relation, valid until table_close in `drop`.
        let raw = unsafe { pg_sys::table_open(relid, lock as pg_sys::LOCKMODE) };
        Opened { raw }
    }

    /// Opens relation `relid` of any kind with `lock` (PostgreSQL raises if it does not exist).
    pub fn relation(relid: pg_sys::Oid, lock: u32) -> Opened {
        // SAFETY: relation_open raises for a missing relation and otherwise returns an open
        // relation, valid until it is closed in `drop` (table_close is relation_close).
        let raw = unsafe { pg_sys::relation_open(relid, lock as pg_sys::LOCKMODE) };
        Opened { raw }
    }

    /// Its live (not dropped) columns, in attribute-number order.
    pub fn columns(&self) -> Vec<ColumnInfo> {
        columns_of(self)
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        // SAFETY: opened by `table` and closed only here; NoLock keeps the lock to the
        // transaction's end. Closing cannot raise, so it is safe while unwinding too.
        unsafe { pg_sys::table_close(self.raw, pg_sys::NoLock as pg_sys::LOCKMODE) }
    }
}

/// A live column of a relation, copied out of its descriptor.
#[derive(Clone, Debug)]
pub struct ColumnInfo {
    pub attnum: pg_sys::AttrNumber,
    pub name: String,
    pub typid: pg_sys::Oid,
    pub typmod: i32,
    pub by_value: bool,
    /// A generated column (its value is computed, never written).
    pub generated: bool,
    /// `GENERATED ALWAYS AS IDENTITY`.
    pub identity_always: bool,
}

/// # Safety
/// `rel` is open.
unsafe fn columns_of_raw(rel: pg_sys::Relation) -> Vec<ColumnInfo> {
    // SAFETY: the descriptor of an open relation (`# Safety`); every field is copied out before
    // this returns.
    unsafe { tuple::live_attributes((*rel).rd_att) }
        .map(|att| ColumnInfo {
            attnum: att.attnum,
            name: tuple::attname(att).to_string(),
            typid: att.atttypid,
            typmod: att.atttypmod,
            by_value: att.attbyval,
            generated: att.attgenerated != 0,
            identity_always: att.attidentity == b'a' as std::ffi::c_char,
        })
        .collect()
}

/// The live columns of an open relation.
pub fn columns_of(rel: &impl Open) -> Vec<ColumnInfo> {
    // SAFETY: `Open` keeps the relation open while `rel` lives.
    unsafe { columns_of_raw(rel.raw()) }
}

/// The relkind of an open relation (`pg_sys::RELKIND_*`).
pub fn relkind(rel: &impl Open) -> u8 {
    // SAFETY: `Open` keeps the relation open while `rel` lives; rd_rel is valid.
    unsafe { (*(*rel.raw()).rd_rel).relkind as u8 }
}

/// The oid of an open relation.
pub fn oid(rel: &impl Open) -> pg_sys::Oid {
    // SAFETY: `Open` keeps the relation open while `rel` lives.
    unsafe { (*rel.raw()).rd_id }
}

/// The owner of an open relation.
pub fn owner(rel: &impl Open) -> pg_sys::Oid {
    // SAFETY: `Open` keeps the relation open while `rel` lives; rd_rel is valid.
    unsafe { (*(*rel.raw()).rd_rel).relowner }
}

/// The schema of an open relation.
pub fn namespace(rel: &impl Open) -> pg_sys::Oid {
    // SAFETY: `Open` keeps the relation open while `rel` lives; rd_rel is valid.
    unsafe { (*(*rel.raw()).rd_rel).relnamespace }
}

/// Whether an open relation is a partition.
pub fn is_partition(rel: &impl Open) -> bool {
    // SAFETY: `Open` keeps the relation open while `rel` lives; rd_rel is valid.
    unsafe { (*(*rel.raw()).rd_rel).relispartition }
}

/// The relkind of relation `relid` (`None`: it does not exist).
pub fn relkind_of(relid: pg_sys::Oid) -> Option<u8> {
    // SAFETY: a syscache lookup; '\0' for a missing relation.
    let kind = unsafe { pg_sys::get_rel_relkind(relid) } as u8;
    (kind != 0).then_some(kind)
}

/// The oid of relation `schema.relname` (`None`: no such schema or relation).
pub fn oid_of(schema: &str, relname: &str) -> Option<pg_sys::Oid> {
    let schema = CString::new(schema).ok()?;
    let relname = CString::new(relname).ok()?;
    oid_of_c(&schema, &relname)
}

/// The oid of the extension's own table `mm_conflict.<relname>` (`None`: it does not exist).
pub fn extension_table(relname: &CStr) -> Option<pg_sys::Oid> {
    oid_of_c(c"mm_conflict", relname)
}

fn oid_of_c(schema: &CStr, relname: &CStr) -> Option<pg_sys::Oid> {
    // SAFETY: catalog lookups by NUL-terminated names; missing_ok returns InvalidOid.
    unsafe {
        let namespace = pg_sys::get_namespace_oid(schema.as_ptr(), true);
        if namespace == pg_sys::InvalidOid {
            return None;
        }
        let relid = pg_sys::get_relname_relid(relname.as_ptr(), namespace);
        (relid != pg_sys::InvalidOid).then_some(relid)
    }
}

/// Whether this role holds SELECT on relation `relid` (as a table-wide privilege).
pub fn may_select(relid: pg_sys::Oid) -> bool {
    // SAFETY: a privilege lookup for the current user; a missing relation reads as no privilege
    // (pg_class_aclcheck raises for it: checked first).
    unsafe {
        relkind_of(relid).is_some()
            && pg_sys::pg_class_aclcheck(relid, pg_sys::GetUserId(), pg_sys::ACL_SELECT as _)
                == pg_sys::AclResult::ACLCHECK_OK
    }
}

/// Raises PostgreSQL's own `42501` ("permission denied for table ...") unless this role holds
/// SELECT on the open relation.
pub fn require_select(rel: &impl Open) {
    // SAFETY: `Open` keeps the relation open while `rel` lives; aclcheck_error raises with the
    // relation's name, valid NameData of the open relation.
    unsafe {
        let raw = rel.raw();
        let allowed =
            pg_sys::pg_class_aclcheck((*raw).rd_id, pg_sys::GetUserId(), pg_sys::ACL_SELECT as _);
        if allowed != pg_sys::AclResult::ACLCHECK_OK {
            pg_sys::aclcheck_error(
                allowed,
                pg_sys::ObjectType::OBJECT_TABLE,
                (*(*raw).rd_rel).relname.data.as_ptr(),
            );
        }
    }
}

/// Whether row-level security applies to this role's reads of relation `relid`.
pub fn row_security_applies(relid: pg_sys::Oid) -> bool {
    // SAFETY: a catalog lookup for an existing relation (the callers hold it open).
    let rls = unsafe { pg_sys::check_enable_rls(relid, pg_sys::InvalidOid, false) };
    rls == pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
}
