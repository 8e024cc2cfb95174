//! Values of delta columns (`smallint`, `integer`, `bigint`, `numeric`) as exact decimals, and the
//! `mm_delta` text that holds their state.

use std::ffi::{CStr, CString};

use mm_conflict_core::{Amount, DeltaError};
use pgrx::pg_sys;

/// The type of a delta column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AmountType {
    Int2,
    Int4,
    Int8,
    /// With the column's type modifier (`numeric(12,2)`), which every sum is coerced to.
    Numeric {
        typmod: i32,
    },
}

/// What a delta column may be (for messages).
pub const AMOUNT_TYPES: &str = "smallint, integer, bigint or numeric";

impl AmountType {
    /// The amount type of a column of type `typid` (`None`: not one a delta column may have;
    /// floating-point types are not: their sums depend on the order of the additions, so nodes
    /// adding the same changes in different orders would differ).
    pub fn of(typid: pg_sys::Oid, typmod: i32) -> Option<AmountType> {
        Some(match typid {
            pg_sys::INT2OID => AmountType::Int2,
            pg_sys::INT4OID => AmountType::Int4,
            pg_sys::INT8OID => AmountType::Int8,
            pg_sys::NUMERICOID => AmountType::Numeric { typmod },
            _ => return None,
        })
    }

    /// The amount a non-NULL datum of this type holds.
    ///
    /// # Safety
    /// `datum` is a valid, non-NULL value of this type.
    pub unsafe fn read(self, datum: pg_sys::Datum) -> Result<Amount, DeltaError> {
        Ok(match self {
            // Pass-by-value integers: the datum's low bits, sign-extended by the casts.
            AmountType::Int2 => Amount::from_i64(i64::from(datum.value() as i16)),
            AmountType::Int4 => Amount::from_i64(i64::from(datum.value() as i32)),
            AmountType::Int8 => Amount::from_i64(datum.value() as i64),
            AmountType::Numeric { .. } => {
                // SAFETY: numeric_out takes a valid numeric datum (`# Safety`) and returns a
                // palloc'd NUL-terminated string.
                let text = unsafe {
                    let out =
                        pgrx::direct_function_call::<&CStr>(pg_sys::numeric_out, &[Some(datum)])
                            .expect("numeric_out returned NULL");
                    out.to_string_lossy().into_owned()
                };
                Amount::parse(&text)?
            }
        })
    }

    /// The datum of this type that holds `amount`: `OutOfRange` beyond an integer type's range;
    /// a numeric beyond the column's precision raises numeric_in's own error (`22003`). A numeric
    /// is palloc'd in the current memory context (in a transaction, as everything SQL calls runs).
    pub fn datum(self, amount: &Amount) -> Result<pg_sys::Datum, DeltaError> {
        let int = amount.to_i64().ok_or(DeltaError::OutOfRange);
        Ok(match self {
            AmountType::Int2 => {
                pg_sys::Datum::from(i16::try_from(int?).map_err(|_| DeltaError::OutOfRange)?)
            }
            AmountType::Int4 => {
                pg_sys::Datum::from(i32::try_from(int?).map_err(|_| DeltaError::OutOfRange)?)
            }
            AmountType::Int8 => pg_sys::Datum::from(int?),
            AmountType::Numeric { typmod } => {
                let text = CString::new(amount.to_string()).expect("a number has no NUL");
                // SAFETY: numeric_in takes a NUL-terminated string, the type's I/O parameter
                // (none for numeric) and the column's modifier.
                unsafe {
                    pgrx::direct_function_call::<pg_sys::Datum>(
                        pg_sys::numeric_in,
                        &[
                            Some(pg_sys::Datum::from(text.as_ptr())),
                            Some(pg_sys::Datum::from(pg_sys::InvalidOid)),
                            Some(pg_sys::Datum::from(typmod)),
                        ],
                    )
                    .expect("numeric_in returned NULL")
                }
            }
        })
    }
}

/// The string a non-NULL `text` datum holds.
///
/// # Safety
/// `datum` is a valid, non-NULL text datum.
pub unsafe fn text_string(datum: pg_sys::Datum) -> String {
    // SAFETY: as `varlena_bytes` requires (`# Safety`).
    let bytes = unsafe { super::tuple::varlena_bytes(datum) };
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A `text` datum holding `text`, palloc'd in the current memory context.
pub fn text_datum(text: &str) -> pg_sys::Datum {
    // SAFETY: cstring_to_text_with_len copies `len` bytes from the pointer into a new text.
    unsafe {
        pg_sys::Datum::from(pg_sys::cstring_to_text_with_len(
            text.as_ptr().cast(),
            text.len() as i32,
        ))
    }
}
