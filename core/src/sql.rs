//! SQL text: identifiers and literals quoted once, the same whatever the session's settings.

/// `ident` double-quoted for SQL text (embedded quotes doubled).
pub fn sql_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// `value` as a SQL string literal (`E'...'` when it holds a backslash), whatever
/// `standard_conforming_strings` is.
pub fn sql_literal(value: &str) -> String {
    let quoted = value.replace('\'', "''");
    if value.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}
