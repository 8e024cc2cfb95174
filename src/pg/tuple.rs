//! Reading columns of heap tuples and tuple descriptors.

use std::ffi::CStr;

use pgrx::pg_sys;

use super::compat;

/// A live (not dropped) column of a descriptor.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub attnum: pg_sys::AttrNumber,
    pub typid: pg_sys::Oid,
}

/// The attribute of column `attnum` (1-based).
///
/// # Safety
/// `tupdesc` is valid and `attnum` within it.
pub unsafe fn attribute<'a>(
    tupdesc: pg_sys::TupleDesc,
    attnum: pg_sys::AttrNumber,
) -> &'a pg_sys::FormData_pg_attribute {
    // SAFETY: the caller guarantees attnum is one of the descriptor's.
    unsafe { &compat::attributes(tupdesc)[attnum as usize - 1] }
}

/// The name of an attribute.
pub fn attname(att: &pg_sys::FormData_pg_attribute) -> &str {
    // SAFETY: attname is NUL-terminated NameData; names are valid UTF-8 in UTF-8 databases,
    // and a name that is not is read as empty (it then matches nothing).
    unsafe { CStr::from_ptr(att.attname.data.as_ptr()) }
        .to_str()
        .unwrap_or("")
}

/// The live (not dropped) attributes of a descriptor, in attribute-number order.
///
/// # Safety
/// `tupdesc` must be valid while the iterator is used.
pub unsafe fn live_attributes<'a>(
    tupdesc: pg_sys::TupleDesc,
) -> impl Iterator<Item = &'a pg_sys::FormData_pg_attribute> {
    // SAFETY: forwarded from the caller.
    unsafe { compat::attributes(tupdesc) }
        .iter()
        .filter(|a| !a.attisdropped)
}

/// A live column by name (names are matched exactly, as PostgreSQL stores them).
///
/// # Safety
/// `tupdesc` must be a valid descriptor.
pub unsafe fn find_column(tupdesc: pg_sys::TupleDesc, name: &str) -> Option<Column> {
    // SAFETY: forwarded from the caller.
    unsafe { live_attributes(tupdesc) }
        .find(|att| attname(att) == name)
        .map(|att| Column {
            attnum: att.attnum,
            typid: att.atttypid,
        })
}

/// Column `attnum` of `tuple` (`None`: NULL).
///
/// # Safety
/// `tuple` is valid and described by `tupdesc`; `attnum` is one of its columns.
pub unsafe fn get(
    tuple: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
    attnum: pg_sys::AttrNumber,
) -> Option<pg_sys::Datum> {
    let mut isnull = false;
    // SAFETY: forwarded from the caller.
    let datum = unsafe { pg_sys::heap_getattr(tuple, attnum as i32, tupdesc, &mut isnull) };
    (!isnull).then_some(datum)
}

/// All columns of `tuple`, by attribute number − 1 (`None`: NULL).
///
/// # Safety
/// `tuple` is valid and described by `tupdesc`.
pub unsafe fn deform(
    tuple: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
) -> Vec<Option<pg_sys::Datum>> {
    // SAFETY: the arrays are sized to the descriptor, as heap_deform_tuple requires.
    unsafe {
        let natts = (*tupdesc).natts as usize;
        let mut values = vec![pg_sys::Datum::from(0); natts];
        let mut nulls = vec![false; natts];
        pg_sys::heap_deform_tuple(tuple, tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
        values
            .into_iter()
            .zip(nulls)
            .map(|(v, null)| (!null).then_some(v))
            .collect()
    }
}

/// A copy of `tuple` with columns `cols` replaced by `values` (`None`: NULL), palloc'd in the
/// current memory context.
///
/// # Safety
/// `tuple` is valid and described by `tupdesc`; `cols` are its attribute numbers and `values`
/// datums of their types.
pub unsafe fn modify(
    tuple: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
    cols: &[pg_sys::AttrNumber],
    values: &[Option<pg_sys::Datum>],
) -> pg_sys::HeapTuple {
    let mut cols: Vec<i32> = cols.iter().map(|&c| i32::from(c)).collect();
    let mut datums: Vec<pg_sys::Datum> = values
        .iter()
        .map(|v| v.unwrap_or(pg_sys::Datum::from(0)))
        .collect();
    let mut nulls: Vec<bool> = values.iter().map(Option::is_none).collect();
    // SAFETY: the arrays hold one entry per replaced column, as the caller guarantees.
    unsafe {
        pg_sys::heap_modify_tuple_by_cols(
            tuple,
            tupdesc,
            cols.len() as i32,
            cols.as_mut_ptr(),
            datums.as_mut_ptr(),
            nulls.as_mut_ptr(),
        )
    }
}

/// The bytes of a non-NULL `text` or `bytea` datum (detoasted into the current context).
///
/// # Safety
/// `datum` is a valid, non-NULL text or bytea datum.
pub unsafe fn varlena_bytes(datum: pg_sys::Datum) -> Vec<u8> {
    // SAFETY: forwarded from the caller.
    unsafe {
        let v = pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr());
        let len = pgrx::varlena::varsize_any_exhdr(v);
        std::slice::from_raw_parts(pgrx::varlena::vardata_any(v).cast::<u8>(), len).to_vec()
    }
}
