//! A table's primary key, or another of its unique keys: its columns, the functions the probe and
//! the key codec need, and the key's binary form (what tombstones store and the key lock hashes).

use std::cell::UnsafeCell;

use pgrx::pg_sys;

use super::datum::Typed;
use super::relation::Open;
use super::settings;
use super::tuple::{self, TupleRef};

/// A primary-key column and the functions the trigger needs for it.
pub struct KeyColumn {
    pub attnum: pg_sys::AttrNumber,
    /// The column's type: a tuple's value is read as a key value only if its column has it.
    typid: pg_sys::Oid,
    pub collation: pg_sys::Oid,
    /// The index opclass's equality function, for scan keys and key comparison.
    pub eq_proc: pg_sys::RegProcedure,
    /// The same equality as an operator in SQL, schema-qualified (`OPERATOR("public".=)`): how
    /// statements match this column, so that they find the rows the index finds (a `citext` key
    /// matches case-insensitively) whatever the session's `search_path`.
    pub eq_operator_sql: String,
    /// `UnsafeCell`: PostgreSQL writes `fn_extra` through these pointers on calls.
    pub eq: Box<UnsafeCell<pg_sys::FmgrInfo>>,
    /// Binary send/receive: tombstones and the key lock identify a key by its binary form, which
    /// is the same on every node and in every session (text output depends on settings).
    send: Box<UnsafeCell<pg_sys::FmgrInfo>>,
    /// For a type whose binary form names node-local objects by oid (an array of a user type, a
    /// composite with a field of one, a `reg*` type): its text form under pinned settings
    /// instead (see [`binary_form_is_portable`]).
    text: Option<(settings::Output, settings::Input)>,
    recv: Box<UnsafeCell<pg_sys::FmgrInfo>>,
    typioparam: pg_sys::Oid,
    typmod: i32,
    /// `smallint`, `integer`, `bigint`: their send output is the value's bytes in network order,
    /// written here without the send function's allocations.
    int_width: Option<usize>,
}

#[cold]
#[inline(never)]
fn wrong_type(attnum: pg_sys::AttrNumber, found: pg_sys::Oid, wanted: pg_sys::Oid) -> ! {
    panic!("column {attnum} of the tuple has type {found:?}, the key column {wanted:?}");
}

impl KeyColumn {
    /// The column's number in `tuple`, after checking that its type there is the key column's
    /// (a tuple of another relation is a bug of the caller: raised, never read as a key).
    #[inline]
    fn checked(&self, tuple: TupleRef) -> pg_sys::AttrNumber {
        let found = tuple.attribute(self.attnum).atttypid;
        if found != self.typid {
            wrong_type(self.attnum, found, self.typid);
        }
        self.attnum
    }
}

pub struct IndexKey {
    pub index_oid: pg_sys::Oid,
    /// The table the index is on.
    pub relid: pg_sys::Oid,
    pub columns: Vec<KeyColumn>,
}

/// The oids of a table's indexes (all of them, ready or not).
///
/// # Safety
/// `rel` must be open.
pub unsafe fn index_oids(rel: pg_sys::Relation) -> Vec<pg_sys::Oid> {
    // SAFETY: rel is open (`# Safety`); RelationGetIndexList returns a palloc'd copy of the
    // relcache's list (NIL: none), read and freed here.
    unsafe {
        let list = pg_sys::RelationGetIndexList(rel);
        if list.is_null() {
            return Vec::new();
        }
        let oids = (0..(*list).length as usize)
            .map(|i| (*(*list).elements.add(i)).oid_value)
            .collect();
        pg_sys::list_free(list);
        oids
    }
}

/// The unique keys of a table besides its primary key that a replicated row can collide on:
/// valid unique indexes on plain columns, without a predicate. (NULLs never collide in them; an
/// index declared NULLS NOT DISTINCT is resolved only for rows without NULLs in it.)
///
pub fn unique_keys(rel: &impl Open) -> Vec<IndexKey> {
    let rel = rel.raw();
    // SAFETY: rel is open and locked (`Open`); each index is opened, read and closed here.
    unsafe {
        let mut keys = Vec::new();
        for oid in index_oids(rel) {
            let index = pg_sys::index_open(oid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
            let form = &*(*index).rd_index;
            let wanted = form.indisunique
                && !form.indisprimary
                && form.indisvalid
                && form.indisready
                && pg_sys::heap_attisnull(
                    (*index).rd_indextuple,
                    pg_sys::Anum_pg_index_indexprs as i32,
                    std::ptr::null_mut(),
                )
                && pg_sys::heap_attisnull(
                    (*index).rd_indextuple,
                    pg_sys::Anum_pg_index_indpred as i32,
                    std::ptr::null_mut(),
                );
            pg_sys::index_close(index, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
            if wanted {
                keys.extend(IndexKey::of_index(rel, oid));
            }
        }
        keys
    }
}

/// Function call info for `proc`, kept for the life of the owner.
///
/// # Safety
/// Must run inside a transaction (catalog lookup); `proc` must be a function's oid.
unsafe fn fmgr(proc: pg_sys::Oid) -> Box<UnsafeCell<pg_sys::FmgrInfo>> {
    // SAFETY: a zeroed FmgrInfo is what fmgr_info_cxt expects to fill; its extra state lives in
    // CacheMemoryContext, which outlives the owner.
    unsafe {
        let finfo = Box::new(UnsafeCell::new(std::mem::zeroed::<pg_sys::FmgrInfo>()));
        pg_sys::fmgr_info_cxt(proc, finfo.get(), pg_sys::CacheMemoryContext);
        finfo
    }
}

/// Operator `oid` in SQL as `OPERATOR(schema.name)`.
///
/// # Safety
/// Must run inside a transaction (catalog lookup); `oid` must be an operator's.
unsafe fn operator_sql(oid: pg_sys::Oid) -> String {
    // SAFETY: syscache lookups of an existing operator and its schema, inside a transaction; the
    // strings are copied before the cache entry is released.
    unsafe {
        let tuple = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::OPEROID as i32,
            pg_sys::Datum::from(oid),
        );
        if tuple.is_null() {
            return "OPERATOR(pg_catalog.=)".into();
        }
        let form = &*(pg_sys::GETSTRUCT(tuple) as *const pg_sys::FormData_pg_operator);
        let name = super::names::cstr_to_string(form.oprname.data.as_ptr());
        let namespace = form.oprnamespace;
        pg_sys::ReleaseSysCache(tuple);
        let schema = super::names::cstr_to_string(pg_sys::get_namespace_name(namespace));
        // Operator names are not identifiers: they are written bare after the schema.
        format!("OPERATOR({}.{name})", super::names::sql_ident(&schema))
    }
}

impl IndexKey {
    /// The primary key of `rel`, if it has one.
    pub fn of(rel: &impl Open) -> Option<IndexKey> {
        let rel = rel.raw();
        // SAFETY: `rel` is open and locked (`Open`), as primary_key_index and of_index require;
        // the oid passed on is `rel`'s own primary-key index.
        unsafe {
            let index_oid = super::compat::primary_key_index(rel);
            if index_oid == pg_sys::InvalidOid {
                return None;
            }
            IndexKey::of_index(rel, index_oid)
        }
    }

    /// The key of index `index_oid` of `rel`.
    ///
    /// # Safety
    /// `rel` must be open and locked, and `index_oid` one of its indexes.
    pub unsafe fn of_index(rel: pg_sys::Relation, index_oid: pg_sys::Oid) -> Option<IndexKey> {
        // SAFETY: rel is open and locked by the caller; the index is opened and closed here, and
        // its key columns are columns of rel.
        unsafe {
            let index = pg_sys::index_open(index_oid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
            let form = &*(*index).rd_index;
            let nkeys = form.indnkeyatts as usize;
            let attnums = form.indkey.values.as_slice(nkeys);
            let columns = (0..nkeys)
                .map(|i| {
                    let attnum = attnums[i];
                    let att = tuple::attribute((*rel).rd_att, attnum);
                    let opcintype = *(*index).rd_opcintype.add(i);
                    let operator = pg_sys::get_opfamily_member(
                        *(*index).rd_opfamily.add(i),
                        opcintype,
                        opcintype,
                        pg_sys::BTEqualStrategyNumber as i16,
                    );
                    let eq_proc = pg_sys::get_opcode(operator);
                    let eq_operator_sql = operator_sql(operator);
                    let (mut send_proc, mut is_varlena) = (pg_sys::InvalidOid, false);
                    pg_sys::getTypeBinaryOutputInfo(att.atttypid, &mut send_proc, &mut is_varlena);
                    let (mut recv_proc, mut typioparam) = (pg_sys::InvalidOid, pg_sys::InvalidOid);
                    pg_sys::getTypeBinaryInputInfo(att.atttypid, &mut recv_proc, &mut typioparam);
                    KeyColumn {
                        attnum,
                        typid: att.atttypid,
                        collation: *(*index).rd_indcollation.add(i),
                        eq_proc,
                        eq_operator_sql,
                        eq: fmgr(eq_proc),
                        send: fmgr(send_proc),
                        recv: fmgr(recv_proc),
                        typioparam,
                        typmod: att.atttypmod,
                        text: (!binary_form_is_portable(att.atttypid, 0)).then(|| {
                            (
                                settings::Output::of(att.atttypid),
                                settings::Input::of(att.atttypid, att.atttypmod),
                            )
                        }),
                        int_width: match att.atttypid {
                            pg_sys::INT2OID => Some(2),
                            pg_sys::INT4OID => Some(4),
                            pg_sys::INT8OID => Some(8),
                            _ => None,
                        },
                    }
                })
                .collect();
            pg_sys::index_close(index, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
            Some(IndexKey {
                index_oid,
                relid: (*rel).rd_id,
                columns,
            })
        }
    }

    /// The attribute numbers of the key columns, in key order.
    pub fn attnums(&self) -> impl Iterator<Item = pg_sys::AttrNumber> + '_ {
        self.columns.iter().map(|c| c.attnum)
    }

    /// The key values of `tuple`, or `None` when one of them is NULL (NULLs never collide).
    pub fn values_if_set(&self, tuple: TupleRef) -> Option<Vec<Typed>> {
        self.columns
            .iter()
            .map(|col| tuple.typed(col.checked(tuple)))
            .collect()
    }

    /// The first key column of `tuple` that is NULL, if any.
    pub fn null_column(&self, tuple: TupleRef) -> Option<pg_sys::AttrNumber> {
        self.columns
            .iter()
            .map(|col| col.checked(tuple))
            .find(|&attnum| tuple.get(attnum).is_none())
    }

    /// The key values of a stored row (a primary key's columns are never NULL there: a NULL is a
    /// bug of the caller, raised as an internal error; a row about to be written is checked with
    /// [`IndexKey::values_if_set`]).
    pub fn values(&self, tuple: TupleRef) -> Vec<Typed> {
        self.values_if_set(tuple)
            .unwrap_or_else(|| null_in_key(self.index_oid))
    }

    /// `tuple`'s key values and their [`IndexKey::encode`]d form.
    pub fn values_and_encoded(&self, tuple: TupleRef) -> (Vec<Typed>, Vec<u8>) {
        let values = self.values(tuple);
        let encoded = self.encode(&values);
        (values, encoded)
    }

    /// [`IndexKey::encode`] of a stored row's key values.
    pub fn encode_row(&self, tuple: TupleRef) -> Vec<u8> {
        self.values_and_encoded(tuple).1
    }

    /// [`IndexKey::encode`] of `tuple`'s key values, `None` when one of them is NULL.
    pub fn encode_row_if_set(&self, tuple: TupleRef) -> Option<Vec<u8>> {
        let values = self.values_if_set(tuple)?;
        Some(self.encode(&values))
    }

    /// Checks that this key is one of relation `relid`'s and `values` its values (for a probe).
    #[inline]
    pub(super) fn check_probe(&self, relid: pg_sys::Oid, values: &[Typed]) {
        if relid != self.relid {
            not_key_values(self.index_oid, values);
        }
        self.check(values);
    }

    /// Checks that `values` are one per key column, each of its column's type.
    #[inline]
    fn check(&self, values: &[Typed]) {
        if values.len() != self.columns.len()
            || self
                .columns
                .iter()
                .zip(values)
                .any(|(col, value)| value.typid() != col.typid)
        {
            not_key_values(self.index_oid, values);
        }
    }

    /// The key in binary form: per column, a 4-byte big-endian length and the type's send output,
    /// or its text under pinned settings for a type whose send output names node-local objects
    /// (see [`binary_form_is_portable`] and [`KEY_FORMAT`]). `values` are this key's column values
    /// (checked).
    pub fn encode(&self, values: &[Typed]) -> Vec<u8> {
        self.check(values);
        let mut out = Vec::with_capacity(self.columns.len() * 12);
        for (col, value) in self.columns.iter().zip(values) {
            let value = value.datum();
            // int2send/int4send/int8send's output, the same bytes, without their allocations.
            if let Some(width) = col.int_width {
                let v = value.value() as i64;
                out.extend_from_slice(&(width as u32).to_be_bytes());
                out.extend_from_slice(&v.to_be_bytes()[8 - width..]);
                continue;
            }
            if let Some((output, _)) = &col.text {
                // SAFETY: `value` is a valid datum of the column's type (checked above); the text
                // is copied out and freed inside the pinned scope.
                let text = settings::pinned(|| unsafe {
                    let cstr = output.cstring(value);
                    let bytes = std::ffi::CStr::from_ptr(cstr).to_bytes().to_vec();
                    pg_sys::pfree(cstr.cast());
                    bytes
                });
                out.extend_from_slice(&(text.len() as u32).to_be_bytes());
                out.extend_from_slice(&text);
                continue;
            }
            // SAFETY: the send function of the column's type, given a value of that type (checked
            // above), returns a palloc'd bytea.
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

    /// The key values back from [`IndexKey::encode`]'s form; `None` if it does not parse.
    /// Receive and input functions allocate in the current context and raise on bytes that are
    /// not a value of their type (in a transaction, as everything SQL calls runs).
    pub fn decode(&self, mut bytes: &[u8]) -> Option<Vec<Typed>> {
        let mut values = Vec::with_capacity(self.columns.len());
        for col in &self.columns {
            let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
            let data = bytes.get(4..4 + len)?;
            bytes = &bytes[4 + len..];
            if let Some((_, input)) = &col.text {
                let text = std::ffi::CString::new(data).ok()?;
                values.push(settings::pinned(|| input.value(Some(&text)))?);
                continue;
            }
            // SAFETY: a fresh StringInfo holds the column's bytes; the receive function of the
            // column's type consumes exactly them (ReceiveFunctionCall raises an error otherwise)
            // and returns a value of that type.
            unsafe {
                let buf = pg_sys::makeStringInfo();
                pg_sys::appendBinaryStringInfo(buf, data.as_ptr().cast(), len as i32);
                let datum =
                    pg_sys::ReceiveFunctionCall(col.recv.get(), buf, col.typioparam, col.typmod);
                values.push(Typed::new(col.typid, datum));
            }
        }
        bytes.is_empty().then_some(values)
    }

    /// True when [`IndexKey::decode`] of `bytes` cannot raise an error: every column is a
    /// `smallint`, `integer` or `bigint` (whose receive functions fail only on a wrong length) and
    /// every length in `bytes` is its column's.
    pub fn decodes_without_error(&self, mut bytes: &[u8]) -> bool {
        for col in &self.columns {
            let Some(width) = col.int_width else {
                return false;
            };
            let Some(len) = bytes
                .get(..4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            else {
                return false;
            };
            if len as usize != width || bytes.len() < 4 + width {
                return false;
            }
            bytes = &bytes[4 + width..];
        }
        bytes.is_empty()
    }

    /// The key's columns as JSON values, decoded from [`IndexKey::encode`]'s form (`None`: it
    /// does not parse), each read by its column's type.
    pub fn decode_json(&self, bytes: &[u8]) -> Option<Vec<serde_json::Value>> {
        let values = self.decode(bytes)?;
        Some(values.into_iter().map(Typed::json).collect())
    }

    /// True when `tuple`'s key equals `values` (this key's values, checked), by the index's
    /// equality functions.
    pub fn matches(&self, tuple: TupleRef, values: &[Typed]) -> bool {
        self.check(values);
        self.columns.iter().zip(values).all(|(col, wanted)| {
            tuple.get(col.checked(tuple)).is_some_and(|have| {
                // SAFETY: `have` is a value of the column, of the key column's type (`checked`),
                // `wanted` a value of that type (`check`); the equality function is the index
                // opclass's own, so it accepts both.
                unsafe {
                    pg_sys::FunctionCall2Coll(col.eq.get(), col.collation, have, wanted.datum())
                        .value()
                        != 0
                }
            })
        })
    }
}

#[cold]
#[inline(never)]
fn null_in_key(index_oid: pg_sys::Oid) -> ! {
    panic!("a NULL in a stored row's key (index {index_oid:?})");
}

#[cold]
#[inline(never)]
fn not_key_values(index_oid: pg_sys::Oid, values: &[Typed]) -> ! {
    panic!("{values:?} are not the values of the key of index {index_oid:?}");
}

/// Whether the binary (send) form of type `typid` is the same on every node: it is not when it
/// names node-local objects by oid. An array's names its element type, a composite's the type of
/// each field, a `reg*` value is an oid; enums send their label, ranges their bounds.
///
/// # Safety
/// In a transaction; `typid` is an existing type.
unsafe fn binary_form_is_portable(typid: pg_sys::Oid, depth: u32) -> bool {
    // OIDs below FirstGenbkiObjectId are assigned by hand in PostgreSQL's catalog files: the same
    // on every node of every major (types made by initdb's scripts or later get theirs in order).
    let builtin = |oid: pg_sys::Oid| oid.to_u32() < pg_sys::FirstGenbkiObjectId;
    // A type nested this deep is not worth the walk: the text form is always right.
    if depth > 8 {
        return false;
    }
    // SAFETY: catalog lookups of existing types (`# Safety`); the row type's descriptor is
    // released before returning.
    unsafe {
        let base = pg_sys::getBaseType(typid);
        if matches!(
            base,
            pg_sys::REGCLASSOID
                | pg_sys::REGTYPEOID
                | pg_sys::REGPROCOID
                | pg_sys::REGPROCEDUREOID
                | pg_sys::REGOPEROID
                | pg_sys::REGOPERATOROID
                | pg_sys::REGCONFIGOID
                | pg_sys::REGDICTIONARYOID
                | pg_sys::REGNAMESPACEOID
                | pg_sys::REGROLEOID
                | pg_sys::REGCOLLATIONOID
        ) {
            return false;
        }
        let element = pg_sys::get_element_type(base);
        if element != pg_sys::InvalidOid {
            return builtin(element) && binary_form_is_portable(element, depth + 1);
        }
        match pg_sys::get_typtype(base) as u8 {
            b'c' => {
                let desc = pg_sys::lookup_rowtype_tupdesc(base, -1);
                let portable = super::compat::attributes(desc)
                    .iter()
                    .filter(|a| !a.attisdropped)
                    .all(|a| builtin(a.atttypid) && binary_form_is_portable(a.atttypid, depth + 1));
                if (*desc).tdrefcount >= 0 {
                    pg_sys::DecrTupleDescRefCount(desc);
                }
                portable
            }
            b'r' => binary_form_is_portable(pg_sys::get_range_subtype(base), depth + 1),
            b'm' => binary_form_is_portable(pg_sys::get_multirange_range(base), depth + 1),
            _ => true,
        }
    }
}

/// The key format [`IndexKey::encode`] writes: format 1, the one every version so far writes.
/// It starts with a 4-byte big-endian length below 2^31 (a value is at most 1 GB), so its first
/// byte is below 0x80. A later format starts with the byte 0xFF and its format number; a node
/// that meets a format it does not know ignores that tombstone with a warning instead of
/// misreading it.
pub const KEY_FORMAT: u8 = 1;

/// The format of a key in binary form (see [`KEY_FORMAT`]).
pub fn format_of(key: &[u8]) -> u8 {
    match key {
        [0xFF, format, ..] => *format,
        [0xFF] => u8::MAX,
        _ => 1,
    }
}

/// True when `key` is in a format later than [`KEY_FORMAT`], which this version cannot read.
pub fn is_future_format(key: &[u8]) -> bool {
    format_of(key) > KEY_FORMAT
}
