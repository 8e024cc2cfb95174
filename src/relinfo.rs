//! Per-trigger cache of everything `mm_resolve` needs to know about its table: the parsed policy,
//! the attribute numbers of the bookkeeping and criterion columns, the primary key with its
//! equality and binary I/O functions, and the prepared statements of the rare paths.
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
use crate::spi::CachedPlan;

/// A primary-key column and the functions the trigger needs for it.
pub struct KeyColumn {
    pub attnum: pg_sys::AttrNumber,
    pub collation: pg_sys::Oid,
    /// The index opclass's equality function, for scan keys and key comparison.
    pub eq_proc: pg_sys::RegProcedure,
    /// `UnsafeCell`: PostgreSQL writes `fn_extra` through these pointers on calls.
    pub eq: Box<UnsafeCell<pg_sys::FmgrInfo>>,
    /// Binary send/receive: tombstones and the key lock identify a key by its binary form, which
    /// is the same on every node and in every session (text output depends on settings).
    pub send: Box<UnsafeCell<pg_sys::FmgrInfo>>,
    pub recv: Box<UnsafeCell<pg_sys::FmgrInfo>>,
    pub typioparam: pg_sys::Oid,
    pub typmod: i32,
}

pub struct PrimaryKey {
    pub index_oid: pg_sys::Oid,
    pub columns: Vec<KeyColumn>,
}

pub struct RelInfo {
    pub relid: pg_sys::Oid,
    /// Schema-qualified, quoted: safe to put in SQL and messages, and the table's identity in
    /// tombstones (the same on every node, unlike its OID).
    pub table: String,
    /// Hash of `table`, the table part of the key lock.
    pub table_hash: u32,
    pub policy: Policy,
    pub order: VersionOrder,
    pub att_islocal: pg_sys::AttrNumber,
    pub att_nodeid: pg_sys::AttrNumber,
    pub att_xacttime: pg_sys::AttrNumber,
    pub att_stattime: pg_sys::AttrNumber,
    /// The user criterion column, for `Criterion::Column`.
    pub att_criterion: Option<pg_sys::AttrNumber>,
    pub primary_key: Option<PrimaryKey>,
    /// Attribute numbers of the live (not dropped) columns: the parameters of the statements below.
    pub live_attnums: Vec<pg_sys::AttrNumber>,
    /// `UPDATE ONLY t SET every column = $n WHERE pk = $k`: an INSERT that wins over a stored row.
    pub overwrite: CachedPlan,
    /// `DELETE FROM ONLY t WHERE pk = $k RETURNING <live columns>` and
    /// `INSERT INTO t VALUES (...)`: settling a row against a new tombstone, and re-sending it.
    pub resend_delete: CachedPlan,
    pub resend_insert: CachedPlan,
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
    crate::tombstone::invalidate(relid);
}

pub fn register_invalidation() {
    // SAFETY: called once from _PG_init; the callback only touches this backend's caches.
    unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(invalidate), pg_sys::Datum::from(0)) };
}

/// The cached entry of trigger `tgoid`, if any (applying a pending flush of all entries first).
fn cached(tgoid: pg_sys::Oid) -> Option<Rc<RelInfo>> {
    if FLUSH_ALL.with(|f| f.replace(false)) {
        CACHE.with(|c| c.borrow_mut().clear());
    }
    CACHE.with(|c| c.borrow().get(&tgoid).cloned())
}

/// The cached entry for `trigger` on `rel`, built on first use.
///
/// # Safety
/// `rel` must be open and locked; `trigger` one of its triggers.
pub unsafe fn lookup(
    rel: pg_sys::Relation,
    trigger: &pg_sys::Trigger,
) -> Result<Rc<RelInfo>, MmError> {
    if let Some(info) = cached(trigger.tgoid) {
        return Ok(info);
    }
    // Build without holding the borrow: catalog access below may run invalidation callbacks.
    // SAFETY: forwarded from the caller.
    let info = Rc::new(unsafe { build(rel, trigger)? });
    CACHE.with(|c| c.borrow_mut().insert(trigger.tgoid, Rc::clone(&info)));
    Ok(info)
}

/// The entry of the `mm_resolve` trigger of `rel`, if it has one (for tombstones, which name
/// their table but arrive without its trigger).
///
/// # Safety
/// `rel` must be open and locked.
pub unsafe fn lookup_for_relation(rel: pg_sys::Relation) -> Result<Option<Rc<RelInfo>>, MmError> {
    // SAFETY: trigdesc and its array belong to the open relation.
    unsafe {
        let trigdesc = (*rel).trigdesc;
        if trigdesc.is_null() {
            return Ok(None);
        }
        let triggers =
            std::slice::from_raw_parts((*trigdesc).triggers, (*trigdesc).numtriggers as usize);
        for trigger in triggers {
            // Only mm_resolve triggers are cached: a hit needs no catalog lookup.
            if let Some(info) = cached(trigger.tgoid) {
                return Ok(Some(info));
            }
            let name = pg_sys::get_func_name(trigger.tgfoid);
            if !name.is_null() && CStr::from_ptr(name).to_bytes() == b"mm_resolve" {
                return lookup(rel, trigger).map(Some);
            }
        }
        Ok(None)
    }
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

/// `"schema"."table"` of a relation, quoted as needed.
///
/// # Safety
/// `rel` must be open.
pub unsafe fn qualified_name(rel: pg_sys::Relation) -> String {
    // SAFETY: rd_rel is valid for an open relation.
    unsafe {
        let schema = cstr_to_string(pg_sys::get_namespace_name((*(*rel).rd_rel).relnamespace));
        let relname = cstr_to_string((*(*rel).rd_rel).relname.data.as_ptr());
        format!("{}.{}", quote_ident(&schema), quote_ident(&relname))
    }
}

/// FNV-1a: a stable hash, the same in every backend and on every node.
pub fn stable_hash(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

unsafe fn type_name(typid: pg_sys::Oid) -> String {
    // SAFETY: format_type_be handles any oid and returns a palloc'd string.
    unsafe { cstr_to_string(pg_sys::format_type_be(typid)) }
}

struct Attr {
    attnum: pg_sys::AttrNumber,
    typid: pg_sys::Oid,
}

pub unsafe fn attrs<'a>(tupdesc: pg_sys::TupleDesc) -> &'a [pg_sys::FormData_pg_attribute] {
    // SAFETY: natts bounds the descriptor's attribute array.
    unsafe { (*tupdesc).attrs.as_slice((*tupdesc).natts as usize) }
}

unsafe fn find_attr(tupdesc: pg_sys::TupleDesc, name: &str) -> Option<Attr> {
    // SAFETY: attribute names are NUL-terminated NameData.
    unsafe {
        attrs(tupdesc).iter().find_map(|att| {
            let attname = CStr::from_ptr(att.attname.data.as_ptr());
            (!att.attisdropped && attname.to_bytes() == name.as_bytes()).then_some(Attr {
                attnum: att.attnum,
                typid: att.atttypid,
            })
        })
    }
}

/// Attribute number of a live column, by name.
///
/// # Safety
/// `tupdesc` must be a valid descriptor.
pub unsafe fn attnum(tupdesc: pg_sys::TupleDesc, name: &str) -> Option<pg_sys::AttrNumber> {
    // SAFETY: forwarded from the caller.
    unsafe { find_attr(tupdesc, name) }.map(|a| a.attnum)
}

const TIME_TYPES: &str = "timestamptz or timestamp";

fn is_time_type(typid: pg_sys::Oid) -> bool {
    typid == pg_sys::TIMESTAMPTZOID || typid == pg_sys::TIMESTAMPOID
}

/// Finds a bookkeeping column and checks its type.
unsafe fn require(
    tupdesc: pg_sys::TupleDesc,
    table: &str,
    name: &str,
    sql_type: &'static str,
    ok: fn(pg_sys::Oid) -> bool,
) -> Result<pg_sys::AttrNumber, MmError> {
    // SAFETY: forwarded from the caller.
    let attr = unsafe { find_attr(tupdesc, name) }.ok_or_else(|| MmError::MissingColumn {
        table: table.to_string(),
        column: name.to_string(),
        add_column_sql: format!("ALTER TABLE {table} ADD COLUMN {name} {sql_type};"),
    })?;
    if !ok(attr.typid) {
        return Err(MmError::UnsupportedColumnType {
            table: table.to_string(),
            column: name.to_string(),
            // SAFETY: any type oid is accepted.
            found: unsafe { type_name(attr.typid) },
            expected: sql_type,
        });
    }
    Ok(attr.attnum)
}

unsafe fn build(rel: pg_sys::Relation, trigger: &pg_sys::Trigger) -> Result<RelInfo, MmError> {
    // SAFETY: rel is open and locked (caller's contract), so its descriptor, rd_rel and the
    // trigger's argument array are valid for the duration of the call.
    unsafe {
        let args: Vec<String> = (0..trigger.tgnargs as usize)
            .map(|i| cstr_to_string(*trigger.tgargs.add(i)))
            .collect();
        let policy = Policy::parse(&args)?;
        let table = qualified_name(rel);
        let tupdesc = (*rel).rd_att;

        let att_islocal = require(tupdesc, &table, COL_ISLOCAL, "boolean", |t| {
            t == pg_sys::BOOLOID
        })?;
        let att_nodeid = require(tupdesc, &table, COL_NODEID, "smallint", |t| {
            t == pg_sys::INT2OID
        })?;
        let att_xacttime = require(tupdesc, &table, COL_XACTTIME, "timestamptz", is_time_type)?;
        let att_stattime = require(tupdesc, &table, COL_STATTIME, "timestamptz", is_time_type)?;
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

        // Statement parameters are numbered by position among live attributes.
        let live: Vec<&pg_sys::FormData_pg_attribute> =
            attrs(tupdesc).iter().filter(|a| !a.attisdropped).collect();
        let param_of = |attnum: pg_sys::AttrNumber| {
            live.iter().position(|a| a.attnum == attnum).map(|p| p + 1)
        };
        let name_of = |a: &pg_sys::FormData_pg_attribute| {
            quote_ident(&cstr_to_string(a.attname.data.as_ptr()))
        };
        let argtypes: Vec<pg_sys::Oid> = live.iter().map(|a| a.atttypid).collect();
        let settable: Vec<(usize, &&pg_sys::FormData_pg_attribute)> = live
            .iter()
            .enumerate()
            .filter(|(_, a)| a.attgenerated == 0)
            .collect();
        let key_match: Vec<String> = primary_key
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
        let key_match = key_match.join(" AND ");
        let overwrite_sql = format!(
            "UPDATE ONLY {table} SET {} WHERE {key_match}",
            settable
                .iter()
                .filter(|(_, a)| a.attidentity != b'a' as std::ffi::c_char)
                .map(|(i, a)| format!("{} = ${}", name_of(a), i + 1))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let resend_delete_sql = format!(
            "DELETE FROM ONLY {table} WHERE {key_match} RETURNING {}",
            live.iter()
                .map(|a| name_of(a))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let resend_insert_sql = format!(
            "INSERT INTO {table} ({}) OVERRIDING SYSTEM VALUE VALUES ({})",
            settable
                .iter()
                .map(|(_, a)| name_of(a))
                .collect::<Vec<_>>()
                .join(", "),
            settable
                .iter()
                .map(|(i, _)| format!("${}", i + 1))
                .collect::<Vec<_>>()
                .join(", ")
        );

        Ok(RelInfo {
            relid: (*rel).rd_id,
            table_hash: stable_hash(table.as_bytes()),
            table,
            order: policy.order(),
            policy,
            att_islocal,
            att_nodeid,
            att_xacttime,
            att_stattime,
            att_criterion,
            primary_key,
            live_attnums: live.iter().map(|a| a.attnum).collect(),
            overwrite: CachedPlan::new(overwrite_sql, argtypes.clone()),
            resend_delete: CachedPlan::new(resend_delete_sql, argtypes.clone()),
            resend_insert: CachedPlan::new(resend_insert_sql, argtypes),
        })
    }
}

/// Function call info for `proc`, kept for the life of the entry.
unsafe fn fmgr(proc: pg_sys::Oid) -> Box<UnsafeCell<pg_sys::FmgrInfo>> {
    // SAFETY: a zeroed FmgrInfo is what fmgr_info_cxt expects to fill; its extra state lives in
    // CacheMemoryContext, which outlives the entry.
    unsafe {
        let finfo = Box::new(UnsafeCell::new(std::mem::zeroed::<pg_sys::FmgrInfo>()));
        pg_sys::fmgr_info_cxt(proc, finfo.get(), pg_sys::CacheMemoryContext);
        finfo
    }
}

/// The primary key of `rel`, if it has one.
///
/// # Safety
/// `rel` must be open and locked.
pub unsafe fn primary_key(rel: pg_sys::Relation) -> Option<PrimaryKey> {
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
        let rel_attrs = attrs((*rel).rd_att);
        let columns = (0..nkeys)
            .map(|i| {
                let attnum = attnums[i];
                let att = &rel_attrs[attnum as usize - 1];
                let opcintype = *(*index).rd_opcintype.add(i);
                let operator = pg_sys::get_opfamily_member(
                    *(*index).rd_opfamily.add(i),
                    opcintype,
                    opcintype,
                    pg_sys::BTEqualStrategyNumber as i16,
                );
                let eq_proc = pg_sys::get_opcode(operator);
                let (mut send_proc, mut is_varlena) = (pg_sys::InvalidOid, false);
                pg_sys::getTypeBinaryOutputInfo(att.atttypid, &mut send_proc, &mut is_varlena);
                let (mut recv_proc, mut typioparam) = (pg_sys::InvalidOid, pg_sys::InvalidOid);
                pg_sys::getTypeBinaryInputInfo(att.atttypid, &mut recv_proc, &mut typioparam);
                KeyColumn {
                    attnum,
                    collation: *(*index).rd_indcollation.add(i),
                    eq_proc,
                    eq: fmgr(eq_proc),
                    send: fmgr(send_proc),
                    recv: fmgr(recv_proc),
                    typioparam,
                    typmod: att.atttypmod,
                }
            })
            .collect();
        pg_sys::index_close(index, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        Some(PrimaryKey { index_oid, columns })
    }
}

impl PrimaryKey {
    /// The key values of `tuple`.
    ///
    /// # Safety
    /// `tuple` is a tuple of the key's relation, described by `tupdesc`.
    pub unsafe fn values(
        &self,
        tuple: pg_sys::HeapTuple,
        tupdesc: pg_sys::TupleDesc,
    ) -> Vec<pg_sys::Datum> {
        self.columns
            .iter()
            .map(|col| {
                let mut isnull = false;
                // SAFETY: forwarded from the caller; primary-key columns are never NULL.
                unsafe { pg_sys::heap_getattr(tuple, col.attnum as i32, tupdesc, &mut isnull) }
            })
            .collect()
    }

    /// The key in binary form: per column, a 4-byte big-endian length and the type's send output.
    ///
    /// # Safety
    /// `values` are this key's column values.
    pub unsafe fn encode(&self, values: &[pg_sys::Datum]) -> Vec<u8> {
        let mut out = Vec::new();
        for (col, &value) in self.columns.iter().zip(values) {
            // SAFETY: the send function of the column's type returns a palloc'd bytea.
            unsafe {
                let bytes = pg_sys::SendFunctionCall(col.send.get(), value);
                let len = pgrx::varlena::varsize_any_exhdr(bytes.cast());
                let data = std::slice::from_raw_parts(
                    pgrx::varlena::vardata_any(bytes.cast()).cast::<u8>(),
                    len,
                );
                out.extend_from_slice(&(len as u32).to_be_bytes());
                out.extend_from_slice(data);
            }
        }
        out
    }

    /// The key values back from [`PrimaryKey::encode`]'s form; `None` if it does not parse.
    ///
    /// # Safety
    /// Must run inside a transaction (receive functions allocate and may raise errors).
    pub unsafe fn decode(&self, mut bytes: &[u8]) -> Option<Vec<pg_sys::Datum>> {
        let mut values = Vec::with_capacity(self.columns.len());
        for col in &self.columns {
            let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
            let data = bytes.get(4..4 + len)?;
            bytes = &bytes[4 + len..];
            // SAFETY: a fresh StringInfo holds the column's bytes; the receive function consumes
            // exactly them (ReceiveFunctionCall raises an error otherwise).
            unsafe {
                let buf = pg_sys::makeStringInfo();
                pg_sys::appendBinaryStringInfo(buf, data.as_ptr().cast(), len as i32);
                values.push(pg_sys::ReceiveFunctionCall(
                    col.recv.get(),
                    buf,
                    col.typioparam,
                    col.typmod,
                ));
            }
        }
        bytes.is_empty().then_some(values)
    }
}

impl RelInfo {
    /// The bookkeeping values (and the user criterion), each column read by `get` (`None`: NULL).
    fn stamps_by(&self, get: impl Fn(pg_sys::AttrNumber) -> Option<pg_sys::Datum>) -> RowStamps {
        let time = |attnum| get(attnum).map(|d: pg_sys::Datum| d.value() as i64);
        RowStamps {
            xacttime: time(self.att_xacttime),
            stattime: time(self.att_stattime),
            node: get(self.att_nodeid).map(|d| d.value() as i16),
            user_criterion: self.att_criterion.and_then(time),
        }
    }

    /// Reads the bookkeeping values (and the user criterion) of a heap tuple.
    ///
    /// # Safety
    /// `tuple` must be a valid tuple of this relation described by `tupdesc`.
    pub unsafe fn stamps(&self, tuple: pg_sys::HeapTuple, tupdesc: pg_sys::TupleDesc) -> RowStamps {
        self.stamps_by(|attnum| {
            let mut isnull = false;
            // SAFETY: forwarded from the caller; all attnums were validated against this
            // descriptor.
            let d = unsafe { pg_sys::heap_getattr(tuple, attnum as i32, tupdesc, &mut isnull) };
            (!isnull).then_some(d)
        })
    }

    /// The bookkeeping values of a row given as statement parameters (live columns in order).
    pub fn stamps_from_parameters(&self, params: &[Option<pg_sys::Datum>]) -> RowStamps {
        self.stamps_by(|attnum| {
            let i = self
                .live_attnums
                .iter()
                .position(|&a| a == attnum)
                .expect("live column");
            params[i]
        })
    }

    /// The values of `tuple`'s live columns, in the order of the statements' parameters.
    ///
    /// # Safety
    /// `tuple` must be a valid tuple of this relation described by `tupdesc`.
    pub unsafe fn parameters(
        &self,
        tuple: pg_sys::HeapTuple,
        tupdesc: pg_sys::TupleDesc,
    ) -> Vec<Option<pg_sys::Datum>> {
        // SAFETY: forwarded from the caller; the arrays are sized to the descriptor.
        unsafe {
            let natts = (*tupdesc).natts as usize;
            let mut values = vec![pg_sys::Datum::from(0); natts];
            let mut nulls = vec![false; natts];
            pg_sys::heap_deform_tuple(tuple, tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
            self.live_attnums
                .iter()
                .map(|&a| (!nulls[a as usize - 1]).then_some(values[a as usize - 1]))
                .collect()
        }
    }
}
