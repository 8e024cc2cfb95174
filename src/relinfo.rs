//! Per-trigger cache of everything `mm_resolve` needs to know about its table: the parsed policy,
//! the attribute numbers of the bookkeeping and criterion columns, the primary key and its hash
//! functions, and the prepared statement that turns a losing INSERT into an UPDATE.
//!
//! Built on the first firing of a trigger in a backend and dropped by a relcache invalidation
//! (ALTER TABLE, CREATE/DROP TRIGGER, …), so the per-row path does no catalog lookups.

use std::cell::{Cell, RefCell, UnsafeCell};
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::rc::Rc;

use mm_conflict_core::{
    Criterion, Policy, RowStamps, VersionOrder, COL_ISLOCAL, COL_NODEID, COL_STATTIME, COL_XACTTIME,
};
use pgrx::pg_sys;

use crate::error::MmError;

/// A primary-key column and how to hash it for the key lock.
pub struct KeyColumn {
    pub attnum: pg_sys::AttrNumber,
    pub collation: pg_sys::Oid,
    /// The type's default hash function; `None` when it has none (then every value of this
    /// column hashes alike, which only makes the key lock coarser).
    /// `UnsafeCell`: PostgreSQL writes `fn_extra` through the pointer on calls.
    pub hash: Option<Box<UnsafeCell<pg_sys::FmgrInfo>>>,
}

pub struct PrimaryKey {
    pub index_oid: pg_sys::Oid,
    pub columns: Vec<KeyColumn>,
}

pub struct RelInfo {
    pub relid: pg_sys::Oid,
    /// Schema-qualified, quoted: safe to put in SQL and messages.
    pub table: String,
    pub policy: Policy,
    pub order: VersionOrder,
    pub att_islocal: pg_sys::AttrNumber,
    pub att_nodeid: pg_sys::AttrNumber,
    pub att_xacttime: pg_sys::AttrNumber,
    pub att_stattime: pg_sys::AttrNumber,
    /// The user criterion column, for `Criterion::Column`.
    pub att_criterion: Option<pg_sys::AttrNumber>,
    pub primary_key: Option<PrimaryKey>,
    /// `UPDATE ONLY t SET every column = $n WHERE pk = $k`, prepared on first use.
    pub overwrite_plan: Cell<pg_sys::SPIPlanPtr>,
    pub overwrite_sql: String,
    /// Attribute numbers of the live (not dropped) columns, in the order of the plan's parameters.
    pub live_attnums: Vec<pg_sys::AttrNumber>,
}

impl Drop for RelInfo {
    fn drop(&mut self) {
        let plan = self.overwrite_plan.replace(std::ptr::null_mut());
        if !plan.is_null() {
            // SAFETY: the plan was saved with SPI_keepplan by this entry and nothing else frees it;
            // the entry is dropped only when no firing trigger holds it (it is behind an `Rc`).
            unsafe { pg_sys::SPI_freeplan(plan) };
        }
    }
}

thread_local! {
    static CACHE: RefCell<HashMap<pg_sys::Oid, Rc<RelInfo>>> = RefCell::new(HashMap::new());
    /// Set when an invalidation arrives while the map is borrowed; the next lookup flushes all.
    static FLUSH_ALL: Cell<bool> = const { Cell::new(false) };
}

/// Relcache invalidation callback: forget entries of `relid` (all entries for InvalidOid).
#[pgrx::pg_guard]
extern "C-unwind" fn invalidate(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    CACHE.with(|cache| match cache.try_borrow_mut() {
        Ok(mut map) if relid != pg_sys::InvalidOid => map.retain(|_, info| info.relid != relid),
        Ok(mut map) => map.clear(),
        Err(_) => FLUSH_ALL.with(|f| f.set(true)),
    });
}

pub fn register_invalidation() {
    // SAFETY: called once from _PG_init; the callback only touches this backend's cache.
    unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(invalidate), pg_sys::Datum::from(0)) };
}

/// The cached entry for the firing trigger, built on first use.
///
/// # Safety
/// `td` must be the `TriggerData` of a trigger being fired by PostgreSQL.
pub unsafe fn lookup(td: &pg_sys::TriggerData) -> Result<Rc<RelInfo>, MmError> {
    // SAFETY: PostgreSQL always sets tg_trigger for a firing trigger.
    let tgoid = unsafe { (*td.tg_trigger).tgoid };
    if FLUSH_ALL.with(|f| f.replace(false)) {
        CACHE.with(|c| c.borrow_mut().clear());
    }
    if let Some(info) = CACHE.with(|c| c.borrow().get(&tgoid).cloned()) {
        return Ok(info);
    }
    // Build without holding the borrow: catalog access below may run invalidation callbacks.
    // SAFETY: forwarded from the caller.
    let info = Rc::new(unsafe { build(td)? });
    CACHE.with(|c| c.borrow_mut().insert(tgoid, Rc::clone(&info)));
    Ok(info)
}

unsafe fn cstr_to_string(ptr: *const std::ffi::c_char) -> String {
    // SAFETY: callers pass NUL-terminated strings owned by PostgreSQL.
    unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}

pub fn quote_ident(ident: &str) -> String {
    let c = CString::new(ident).expect("identifier without NUL");
    // SAFETY: quote_identifier reads a NUL-terminated string and returns the same pointer or a
    // palloc'd copy, both valid until we copy it out.
    unsafe { cstr_to_string(pg_sys::quote_identifier(c.as_ptr())) }
}

unsafe fn type_name(typid: pg_sys::Oid) -> String {
    // SAFETY: format_type_be handles any oid and returns a palloc'd string.
    unsafe { cstr_to_string(pg_sys::format_type_be(typid)) }
}

struct Attr {
    attnum: pg_sys::AttrNumber,
    typid: pg_sys::Oid,
}

unsafe fn find_attr(tupdesc: pg_sys::TupleDesc, name: &str) -> Option<Attr> {
    // SAFETY: tupdesc is the relation's descriptor; natts bounds the attrs array.
    unsafe {
        let natts = (*tupdesc).natts as usize;
        let attrs = (*tupdesc).attrs.as_slice(natts);
        attrs.iter().find_map(|att| {
            let attname = CStr::from_ptr(att.attname.data.as_ptr());
            (!att.attisdropped && attname.to_bytes() == name.as_bytes()).then_some(Attr {
                attnum: att.attnum,
                typid: att.atttypid,
            })
        })
    }
}

const TIME_TYPES: &str = "timestamptz or timestamp";

fn is_time_type(typid: pg_sys::Oid) -> bool {
    typid == pg_sys::TIMESTAMPTZOID || typid == pg_sys::TIMESTAMPOID
}

unsafe fn build(td: &pg_sys::TriggerData) -> Result<RelInfo, MmError> {
    // SAFETY: td comes from the trigger manager (caller's contract), so its relation, trigger and
    // the relation's descriptor are valid for the duration of the call.
    unsafe {
        let rel = td.tg_relation;
        let trigger = &*td.tg_trigger;
        let args: Vec<String> = (0..trigger.tgnargs as usize)
            .map(|i| cstr_to_string(*trigger.tgargs.add(i)))
            .collect();
        let policy = Policy::parse(&args)?;

        let relid = (*rel).rd_id;
        let schema = cstr_to_string(pg_sys::get_namespace_name((*(*rel).rd_rel).relnamespace));
        let relname = cstr_to_string((*(*rel).rd_rel).relname.data.as_ptr());
        let table = format!("{}.{}", quote_ident(&schema), quote_ident(&relname));
        let tupdesc = (*rel).rd_att;

        let require = |name: &str, sql_type: &'static str, ok: &dyn Fn(pg_sys::Oid) -> bool| {
            let attr = find_attr(tupdesc, name).ok_or_else(|| MmError::MissingColumn {
                table: table.clone(),
                column: name.to_string(),
                add_column_sql: format!("ALTER TABLE {table} ADD COLUMN {name} {sql_type};"),
            })?;
            if !ok(attr.typid) {
                return Err(MmError::UnsupportedColumnType {
                    table: table.clone(),
                    column: name.to_string(),
                    found: type_name(attr.typid),
                    expected: sql_type,
                });
            }
            Ok(attr.attnum)
        };
        let att_islocal = require(COL_ISLOCAL, "boolean", &|t| t == pg_sys::BOOLOID)?;
        let att_nodeid = require(COL_NODEID, "smallint", &|t| t == pg_sys::INT2OID)?;
        let att_xacttime = require(COL_XACTTIME, "timestamptz", &is_time_type)?;
        let att_stattime = require(COL_STATTIME, "timestamptz", &is_time_type)?;

        let att_criterion = match &policy.criterion {
            Criterion::Column(name) => {
                let attr =
                    find_attr(tupdesc, name).ok_or_else(|| MmError::UnknownCriterionColumn {
                        table: table.clone(),
                        column: name.clone(),
                    })?;
                if !is_time_type(attr.typid) {
                    return Err(MmError::UnsupportedColumnType {
                        table: table.clone(),
                        column: name.clone(),
                        found: type_name(attr.typid),
                        expected: TIME_TYPES,
                    });
                }
                Some(attr.attnum)
            }
            _ => None,
        };

        let primary_key = primary_key(rel);

        // The overwrite statement: every live, non-generated column from its parameter, keyed by
        // the primary key. Parameters are numbered by position among live attributes.
        let natts = (*tupdesc).natts as usize;
        let attrs = (*tupdesc).attrs.as_slice(natts);
        let live: Vec<&pg_sys::FormData_pg_attribute> =
            attrs.iter().filter(|a| !a.attisdropped).collect();
        let param_of = |attnum: pg_sys::AttrNumber| {
            live.iter().position(|a| a.attnum == attnum).map(|p| p + 1)
        };
        let name_of = |a: &pg_sys::FormData_pg_attribute| {
            quote_ident(&cstr_to_string(a.attname.data.as_ptr()))
        };
        let set_list: Vec<String> = live
            .iter()
            .enumerate()
            .filter(|(_, a)| a.attgenerated == 0 && a.attidentity != b'a' as std::ffi::c_char)
            .map(|(i, a)| format!("{} = ${}", name_of(a), i + 1))
            .collect();
        let where_list: Vec<String> = primary_key
            .iter()
            .flat_map(|pk| pk.columns.iter())
            .map(|k| {
                let a = live
                    .iter()
                    .find(|a| a.attnum == k.attnum)
                    .expect("key column is live");
                format!(
                    "{} = ${}",
                    name_of(a),
                    param_of(k.attnum).expect("key column has a parameter")
                )
            })
            .collect();
        let overwrite_sql = format!(
            "UPDATE ONLY {table} SET {} WHERE {}",
            set_list.join(", "),
            where_list.join(" AND ")
        );
        let live_attnums = live.iter().map(|a| a.attnum).collect();

        Ok(RelInfo {
            relid,
            table,
            order: policy.order(),
            policy,
            att_islocal,
            att_nodeid,
            att_xacttime,
            att_stattime,
            att_criterion,
            primary_key,
            overwrite_plan: Cell::new(std::ptr::null_mut()),
            overwrite_sql,
            live_attnums,
        })
    }
}

unsafe fn primary_key(rel: pg_sys::Relation) -> Option<PrimaryKey> {
    // SAFETY: rel is open and locked by the caller; the index is opened and closed here.
    unsafe {
        let index_oid = pg_sys::RelationGetPrimaryKeyIndex(rel);
        if index_oid == pg_sys::InvalidOid {
            return None;
        }
        let index = pg_sys::index_open(index_oid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let form = &*(*index).rd_index;
        let nkeys = form.indnkeyatts as usize;
        let attnums = form.indkey.values.as_slice(nkeys);
        let columns = (0..nkeys)
            .map(|i| {
                let attnum = attnums[i];
                let typid =
                    (*(*rel).rd_att).attrs.as_slice(attnum as usize)[attnum as usize - 1].atttypid;
                let collation = *(*index).rd_indcollation.add(i);
                let typcache = pg_sys::lookup_type_cache(typid, pg_sys::TYPECACHE_HASH_PROC as i32);
                let hash = if (*typcache).hash_proc != pg_sys::InvalidOid {
                    let finfo = Box::new(UnsafeCell::new(std::mem::zeroed::<pg_sys::FmgrInfo>()));
                    pg_sys::fmgr_info_cxt(
                        (*typcache).hash_proc,
                        finfo.get(),
                        pg_sys::CacheMemoryContext,
                    );
                    Some(finfo)
                } else {
                    None
                };
                KeyColumn {
                    attnum,
                    collation,
                    hash,
                }
            })
            .collect();
        pg_sys::index_close(index, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        Some(PrimaryKey { index_oid, columns })
    }
}

impl RelInfo {
    /// Reads the bookkeeping values (and the user criterion) of a heap tuple.
    ///
    /// # Safety
    /// `tuple` must be a valid tuple of this relation described by `tupdesc`.
    pub unsafe fn stamps(&self, tuple: pg_sys::HeapTuple, tupdesc: pg_sys::TupleDesc) -> RowStamps {
        // SAFETY: forwarded from the caller; all attnums were validated against this descriptor.
        unsafe {
            let time = |attnum: pg_sys::AttrNumber| {
                let mut isnull = false;
                let d = pg_sys::heap_getattr(tuple, attnum as i32, tupdesc, &mut isnull);
                (!isnull).then(|| d.value() as i64)
            };
            let mut isnull = false;
            let node = pg_sys::heap_getattr(tuple, self.att_nodeid as i32, tupdesc, &mut isnull);
            RowStamps {
                xacttime: time(self.att_xacttime),
                stattime: time(self.att_stattime),
                node: (!isnull).then(|| node.value() as i16),
                user_criterion: self.att_criterion.and_then(time),
            }
        }
    }
}
