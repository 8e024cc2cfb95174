//! Values of known types ([`Typed`]: what crosses from `pg` to the rest of the extension and
//! back, so that no datum is ever read or written as another type), and values as JSON
//! (conflict reports, table_diff's keys): a datum read by its own type.

use std::ffi::CStr;

use pgrx::pg_sys;
use serde_json::Value;

/// A non-NULL value and its type. Made only in `pg` (from a column, which gives its type; from
/// Rust values by the constructors below; by a type's input or receive function), so its datum is
/// always a valid value of `typid`; the functions that take one (statement parameters, tuples
/// formed, key probes) check the type they expect against it. A pass-by-reference value lives in
/// the memory context it was made in, as every datum does: use it within the call that made it.
#[derive(Clone, Copy, Debug)]
pub struct Typed {
    typid: pg_sys::Oid,
    datum: pg_sys::Datum,
}

impl Typed {
    /// # Safety
    /// `datum` is a valid, non-NULL value of type `typid`.
    #[inline]
    pub(super) unsafe fn new(typid: pg_sys::Oid, datum: pg_sys::Datum) -> Typed {
        Typed { typid, datum }
    }

    #[inline]
    pub fn typid(self) -> pg_sys::Oid {
        self.typid
    }

    /// The datum (for code in `pg` and for by-value reads: a number, a flag).
    #[inline]
    pub fn datum(self) -> pg_sys::Datum {
        self.datum
    }

    pub fn bool(value: bool) -> Typed {
        Typed {
            typid: pg_sys::BOOLOID,
            datum: value.into(),
        }
    }

    pub fn int2(value: i16) -> Typed {
        Typed {
            typid: pg_sys::INT2OID,
            datum: value.into(),
        }
    }

    /// A `timestamptz`: microseconds since 2000-01-01 UTC.
    pub fn timestamptz(micros: i64) -> Typed {
        Typed {
            typid: pg_sys::TIMESTAMPTZOID,
            datum: micros.into(),
        }
    }

    /// A `text` holding `bytes` (not checked to be valid in the database encoding: callers pass
    /// names and text they read from the database), palloc'd in the current memory context.
    pub fn text(bytes: &[u8]) -> Typed {
        Typed {
            typid: pg_sys::TEXTOID,
            datum: varlena(bytes),
        }
    }

    /// A `bytea` holding `bytes`, palloc'd in the current memory context.
    pub fn bytea(bytes: &[u8]) -> Typed {
        Typed {
            typid: pg_sys::BYTEAOID,
            datum: varlena(bytes),
        }
    }

    /// The value as JSON, read by its own type (see [`json`]).
    pub fn json(self) -> Value {
        // SAFETY: a valid value of its type (how a Typed is made).
        unsafe { json(self.typid, self.datum) }
    }

    /// The bytes of a `text` or `bytea` value (detoasted into the current context); `None` for
    /// another type.
    pub fn bytes(self) -> Option<Vec<u8>> {
        matches!(self.typid, pg_sys::TEXTOID | pg_sys::BYTEAOID)
            // SAFETY: a valid text or bytea value (checked above), a varlena.
            .then(|| unsafe { varlena_bytes(self.datum) })
    }
}

/// The bytes of a non-NULL `text` or `bytea` datum (detoasted into the current context).
///
/// # Safety
/// `datum` is a valid, non-NULL text or bytea datum.
pub unsafe fn varlena_bytes(datum: pg_sys::Datum) -> Vec<u8> {
    // SAFETY: `datum` is a valid non-NULL text/bytea (`# Safety`), i.e. a varlena pointer; the
    // detoasted copy's header gives the data length, and the bytes are copied out before return.
    unsafe {
        let v = pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr());
        let len = pgrx::varlena::varsize_any_exhdr(v);
        std::slice::from_raw_parts(pgrx::varlena::vardata_any(v).cast::<u8>(), len).to_vec()
    }
}

/// A varlena holding `bytes` (text and bytea share the layout), palloc'd.
fn varlena(bytes: &[u8]) -> pg_sys::Datum {
    // SAFETY: copies `bytes` into a palloc'd varlena.
    unsafe {
        pg_sys::Datum::from(pg_sys::cstring_to_text_with_len(
            bytes.as_ptr().cast(),
            bytes.len() as i32,
        ))
    }
}

/// A column value as JSON: booleans, integers, finite floats and json/jsonb as themselves, dates
/// and times in ISO 8601 (as `to_jsonb` writes them), every other type as its text output.
///
/// # Safety
/// `datum` is a valid, non-NULL datum of type `typid`.
unsafe fn json(typid: pg_sys::Oid, datum: pg_sys::Datum) -> Value {
    match typid {
        pg_sys::BOOLOID => return Value::Bool(datum.value() != 0),
        pg_sys::INT2OID => return Value::from(datum.value() as i16),
        pg_sys::INT4OID => return Value::from(datum.value() as i32),
        pg_sys::INT8OID => return Value::from(datum.value() as i64),
        pg_sys::DATEOID
        | pg_sys::TIMEOID
        | pg_sys::TIMETZOID
        | pg_sys::TIMESTAMPOID
        | pg_sys::TIMESTAMPTZOID => {
            // SAFETY: json's own ISO 8601 encoder for these types (as to_jsonb uses), palloc'd.
            return unsafe {
                let cstr = pg_sys::JsonEncodeDateTime(
                    std::ptr::null_mut(),
                    datum,
                    typid,
                    std::ptr::null(),
                );
                Value::String(CStr::from_ptr(cstr).to_string_lossy().into_owned())
            };
        }
        _ => {}
    }
    // SAFETY: the output function of the value's own type.
    let text = unsafe {
        let (mut output, mut is_varlena) = (pg_sys::InvalidOid, false);
        pg_sys::getTypeOutputInfo(typid, &mut output, &mut is_varlena);
        let cstr = pg_sys::OidOutputFunctionCall(output, datum);
        let text = CStr::from_ptr(cstr).to_string_lossy().into_owned();
        pg_sys::pfree(cstr.cast());
        text
    };
    match typid {
        pg_sys::FLOAT4OID | pg_sys::FLOAT8OID => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::String(text), Value::Number),
        pg_sys::JSONOID | pg_sys::JSONBOID => {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        }
        _ => Value::String(text),
    }
}
