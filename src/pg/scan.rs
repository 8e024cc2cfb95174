//! Sequential scans of a table, row by row, and a safe view of each row the scan holds.

use std::ffi::CStr;

use pgrx::{pg_sys, PgMemoryContexts};

use super::relation::Open;
use super::settings::Output;
use super::tuple::TupleRef;

/// A row of a scan, deformed in the scan's slot: valid while the callback that received it runs.
#[derive(Clone, Copy)]
pub struct ScannedRow<'a> {
    slot: *mut pg_sys::TupleTableSlot,
    values: &'a [pg_sys::Datum],
    nulls: &'a [bool],
    attributes: &'a [pg_sys::FormData_pg_attribute],
}

impl<'a> ScannedRow<'a> {
    /// Whether column `index` (attribute number − 1) is NULL.
    pub fn is_null(self, index: usize) -> bool {
        self.nulls[index]
    }

    /// The datum of column `index` (a by-value column's value; a pointer for the others).
    pub fn datum(self, index: usize) -> Option<pg_sys::Datum> {
        (!self.nulls[index]).then(|| self.values[index])
    }

    /// The attribute of column `index`.
    pub fn attribute(self, index: usize) -> &'a pg_sys::FormData_pg_attribute {
        &self.attributes[index]
    }

    /// The in-memory bytes of non-NULL column `index`: a by-value column's `attlen` bytes, a
    /// varlena's data (detoasted into the current memory context), a C string's characters.
    pub fn bytes(self, index: usize) -> Option<std::borrow::Cow<'a, [u8]>> {
        let datum = self.datum(index)?;
        let att = self.attribute(index);
        if att.attbyval {
            let bytes = datum.value().to_le_bytes();
            let len = (att.attlen.max(0) as usize).min(bytes.len());
            return Some(std::borrow::Cow::Owned(bytes[..len].to_vec()));
        }
        // SAFETY: a non-NULL datum of a by-reference column of the deformed tuple points to its
        // value, which the slot keeps while the row is being read ('a); a detoasted copy lives in
        // the current context, which the scan resets only after the callback.
        let bytes = unsafe {
            match att.attlen {
                -1 => {
                    let plain = pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr());
                    std::slice::from_raw_parts(
                        pgrx::varlena::vardata_any(plain).cast::<u8>(),
                        pgrx::varlena::varsize_any_exhdr(plain),
                    )
                }
                -2 => CStr::from_ptr(datum.cast_mut_ptr::<std::ffi::c_char>()).to_bytes(),
                len => std::slice::from_raw_parts(datum.cast_mut_ptr::<u8>(), len as usize),
            }
        };
        Some(std::borrow::Cow::Borrowed(bytes))
    }

    /// The text of non-NULL column `index` by `output`, which must print the column's type (it
    /// is checked); palloc'd in the current memory context.
    pub fn text(self, index: usize, output: &Output) -> Option<&'a CStr> {
        let datum = self.datum(index)?;
        let typid = self.attribute(index).atttypid;
        if typid != output.typid() {
            panic!(
                "column {} has type {typid:?}, not the output function's {:?}",
                index + 1,
                output.typid()
            );
        }
        // SAFETY: a non-NULL datum of the column, of the type `output` prints (checked); the
        // text is palloc'd in the current context, reset only after the callback.
        Some(unsafe { CStr::from_ptr(output.cstring(datum)) })
    }

    /// The row as a heap tuple (the slot's own, not copied).
    pub fn tuple(self) -> TupleRef<'a> {
        let mut should_free = false;
        // SAFETY: the slot holds a heap tuple of the scanned table (a buffer heap slot): fetching
        // it without materializing returns that tuple, valid while the slot holds it ('a);
        // the slot's descriptor describes it.
        unsafe {
            let tuple = pg_sys::ExecFetchSlotHeapTuple(self.slot, false, &mut should_free);
            TupleRef::new(tuple, (*self.slot).tts_tupleDescriptor)
        }
    }
}

/// Every version of every row of `rel` (an open, locked table) that a scan under `SnapshotAny`
/// returns: live ones, ones still being written, deleted ones not yet vacuumed, each a tuple of
/// `rel` valid while `each` runs.
pub fn each_version(rel: &impl Open, mut each: impl FnMut(TupleRef<'_>)) {
    let raw = rel.raw();
    // SAFETY: a heap scan of an open, locked table; every tuple it returns is the table's,
    // described by its descriptor and pinned until the next call; the scan ends before returning
    // (an error aborts the transaction, which releases it).
    unsafe {
        let tupdesc = (*raw).rd_att;
        let scan = pg_sys::systable_beginscan(
            raw,
            pg_sys::InvalidOid,
            false,
            &raw mut pg_sys::SnapshotAnyData,
            0,
            std::ptr::null_mut(),
        );
        loop {
            let tuple = pg_sys::systable_getnext(scan);
            if tuple.is_null() {
                break;
            }
            each(TupleRef::new(tuple, tupdesc));
        }
        pg_sys::systable_endscan(scan);
    }
}

/// Calls `each` with every row of an ordinary table `rel` (open and locked), deformed, under the
/// statement's snapshot; what `each` allocates goes to a per-row memory context (named
/// `context_name`), reset after each row. Checks for interrupts every 4096 rows.
pub fn each_row(rel: &impl Open, context_name: &str, mut each: impl FnMut(ScannedRow<'_>)) {
    let raw = rel.raw();
    let mut per_row = PgMemoryContexts::new(context_name);
    // SAFETY: a plain sequential scan of an open, locked table under the statement's snapshot;
    // after slot_getallattrs the slot's value and null arrays hold natts deformed columns; the
    // slot and the scan are released before returning (an error aborts the transaction, which
    // releases both).
    unsafe {
        let scan =
            pg_sys::table_beginscan(raw, pg_sys::GetActiveSnapshot(), 0, std::ptr::null_mut());
        let slot = pg_sys::table_slot_create(raw, std::ptr::null_mut());
        let attributes = super::compat::attributes((*slot).tts_tupleDescriptor);
        let natts = attributes.len();
        let mut rows = 0u64;
        while pg_sys::table_scan_getnextslot(
            scan,
            pg_sys::ScanDirection::ForwardScanDirection,
            slot,
        ) {
            pg_sys::slot_getallattrs(slot);
            let row = ScannedRow {
                slot,
                values: std::slice::from_raw_parts((*slot).tts_values, natts),
                nulls: std::slice::from_raw_parts((*slot).tts_isnull, natts),
                attributes,
            };
            per_row.switch_to(|_| each(row));
            // Frees detoasted copies; a no-op (PostgreSQL checks) when the row allocated nothing.
            per_row.reset();
            rows += 1;
            if rows.is_multiple_of(4096) {
                pg_sys::check_for_interrupts!();
            }
        }
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::table_endscan(scan);
    }
}
