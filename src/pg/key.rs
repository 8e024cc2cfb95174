//! A table's primary key: its columns, the functions the probe and the key codec need, and the
//! key's binary form (what tombstones store and the key lock hashes).

use std::cell::UnsafeCell;

use pgrx::pg_sys;

use super::tuple;

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
    send: Box<UnsafeCell<pg_sys::FmgrInfo>>,
    recv: Box<UnsafeCell<pg_sys::FmgrInfo>>,
    typioparam: pg_sys::Oid,
    typmod: i32,
}

pub struct PrimaryKey {
    pub index_oid: pg_sys::Oid,
    pub columns: Vec<KeyColumn>,
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

impl PrimaryKey {
    /// The primary key of `rel`, if it has one.
    ///
    /// # Safety
    /// `rel` must be open and locked.
    pub unsafe fn of(rel: pg_sys::Relation) -> Option<PrimaryKey> {
        // SAFETY: rel is open and locked by the caller; the index is opened and closed here, and
        // its key columns are columns of rel.
        unsafe {
            let index_oid = super::compat::primary_key_index(rel);
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
                    let att = tuple::attribute((*rel).rd_att, attnum);
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

    /// The attribute numbers of the key columns, in key order.
    pub fn attnums(&self) -> impl Iterator<Item = pg_sys::AttrNumber> + '_ {
        self.columns.iter().map(|c| c.attnum)
    }

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
                // SAFETY: forwarded from the caller; primary-key columns are never NULL.
                unsafe { tuple::get(tuple, tupdesc, col.attnum) }.unwrap_or(pg_sys::Datum::from(0))
            })
            .collect()
    }

    /// The key in binary form: per column, a 4-byte big-endian length and the type's send output
    /// (see [`KEY_FORMAT`]).
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

    /// True when `tuple`'s key equals `values` (by the index's equality functions).
    ///
    /// # Safety
    /// `tuple` is a pinned tuple of the key's relation described by `tupdesc`; `values` are
    /// key values.
    pub unsafe fn matches(
        &self,
        tuple: pg_sys::HeapTuple,
        tupdesc: pg_sys::TupleDesc,
        values: &[pg_sys::Datum],
    ) -> bool {
        self.columns.iter().zip(values).all(|(col, &wanted)| {
            // SAFETY: forwarded from the caller; the equality function is the index opclass's own.
            unsafe {
                tuple::get(tuple, tupdesc, col.attnum).is_some_and(|have| {
                    pg_sys::FunctionCall2Coll(col.eq.get(), col.collation, have, wanted).value()
                        != 0
                })
            }
        })
    }
}

/// The key format [`PrimaryKey::encode`] writes: format 1, the one every version so far writes.
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
