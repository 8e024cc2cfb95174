//! Values as JSON (conflict reports, table_diff's keys): a datum read by its own type.

use std::ffi::CStr;

use pgrx::pg_sys;
use serde_json::Value;

/// A column value as JSON: booleans, integers, finite floats and json/jsonb as themselves, dates
/// and times in ISO 8601 (as `to_jsonb` writes them), every other type as its text output.
///
/// # Safety
/// `datum` is a valid, non-NULL datum of type `typid`.
pub unsafe fn json(typid: pg_sys::Oid, datum: pg_sys::Datum) -> Value {
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
