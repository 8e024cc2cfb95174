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

/// An `interval` argument as (its text, whole milliseconds); `22023` when it is negative.
pub fn interval_ms(
    value: Option<pgrx::datum::Interval>,
    function: &str,
    argument: &str,
) -> (String, i64) {
    let interval = given(value, function, argument);
    let ms = crate::pg::spi::read_one::<i64>(
        "SELECT (pg_catalog.date_part('epoch', $1::pg_catalog.interval) * 1000)::pg_catalog.int8",
        &[interval.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(0);
    let text = crate::pg::spi::read_one::<String>(
        "SELECT $1::pg_catalog.interval::pg_catalog.text",
        &[interval.into()],
    )
    .ok()
    .flatten()
    .unwrap_or_default();
    if ms < 0 {
        MmError::NegativeInterval {
            function: function.into(),
            argument: argument.into(),
            value: text.clone(),
        }
        .raise()
    }
    (text, ms)
}
