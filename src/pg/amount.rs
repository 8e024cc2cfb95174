//! Values of delta columns (`smallint`, `integer`, `bigint`, `numeric`) as exact decimals, and the
//! `mm_delta` text that holds their state.

use std::ffi::{CStr, CString};

use mm_conflict_core::{Amount, DeltaError};
use pgrx::pg_sys;

use super::datum::Typed;

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

    /// The amount `value` (a value of a column of this type) holds.
    pub fn read(self, value: Typed) -> Result<Amount, DeltaError> {
        if value.typid() != self.typid() {
            wrong_type(value, self);
        }
        let datum = value.datum();
        Ok(match self {
            // Pass-by-value integers: the datum's low bits, sign-extended by the casts.
            AmountType::Int2 => Amount::from_i64(i64::from(datum.value() as i16)),
            AmountType::Int4 => Amount::from_i64(i64::from(datum.value() as i32)),
            AmountType::Int8 => Amount::from_i64(datum.value() as i64),
            AmountType::Numeric { .. } => {
                // SAFETY: numeric_out takes a valid numeric datum (checked above: a Typed is a
                // valid value of its type) and returns a palloc'd NUL-terminated string.
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

    /// The value of this type that holds `amount`: `OutOfRange` beyond an integer type's range;
    /// a numeric beyond the column's precision raises numeric_in's own error (`22003`). A numeric
    /// is palloc'd in the current memory context (in a transaction, as everything SQL calls runs).
    pub fn value(self, amount: &Amount) -> Result<Typed, DeltaError> {
        let int = amount.to_i64().ok_or(DeltaError::OutOfRange);
        let datum = match self {
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
        };
        // SAFETY: a non-NULL datum of this type, made above by the type's own rules.
        Ok(unsafe { Typed::new(self.typid(), datum) })
    }

    /// The type's OID.
    pub fn typid(self) -> pg_sys::Oid {
        match self {
            AmountType::Int2 => pg_sys::INT2OID,
            AmountType::Int4 => pg_sys::INT4OID,
            AmountType::Int8 => pg_sys::INT8OID,
            AmountType::Numeric { .. } => pg_sys::NUMERICOID,
        }
    }
}

/// The string a `text` value holds (`None`: another type).
pub fn text_string(value: Typed) -> Option<String> {
    (value.typid() == pg_sys::TEXTOID)
        .then(|| value.bytes())
        .flatten()
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

/// A `text` value holding `text`, palloc'd in the current memory context.
pub fn text_value(text: &str) -> Typed {
    Typed::text(text.as_bytes())
}

#[cold]
#[inline(never)]
fn wrong_type(value: Typed, expected: AmountType) -> ! {
    panic!("{value:?} read as an amount of type {expected:?}");
}
