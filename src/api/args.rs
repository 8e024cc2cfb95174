//! Arguments of functions that are not `strict`: NULLs are refused with `22004` naming the
//! argument (pgrx would report a NULL where a value is needed as an internal error).

use crate::error::MmError;

/// A non-NULL argument.
pub fn given<T>(value: Option<T>, function: &str, argument: &str) -> T {
    value.unwrap_or_else(|| {
        MmError::NullArgument {
            function: function.into(),
            argument: argument.into(),
        }
        .raise()
    })
}

/// An array argument without NULL elements.
pub fn no_nulls<T>(values: Vec<Option<T>>, function: &str, argument: &str) -> Vec<T> {
    values
        .into_iter()
        .map(|v| given(v, function, &format!("an element of {argument}")))
        .collect()
}
