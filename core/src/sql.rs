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

/// A `bytea`'s text in hex form (`\x0102`), as PostgreSQL prints it with `bytea_output = hex`.
pub fn bytea_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut text = String::with_capacity(2 + bytes.len() * 2);
    text.push_str("\\x");
    for b in bytes {
        let _ = write!(text, "{b:02x}");
    }
    text
}

/// The bytes of a `bytea`'s hex text (`\x0102`); `None` when it is not that form.
pub fn bytea_from_hex(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("\\x")?;
    if hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytea_hex_text_reads_back() {
        for bytes in [vec![], vec![0u8, 1, 0xab, 0xff]] {
            assert_eq!(bytea_from_hex(&bytea_hex(&bytes)), Some(bytes));
        }
        assert_eq!(bytea_hex(&[0, 0xff]), "\\x00ff");
        assert_eq!(bytea_from_hex("00ff"), None);
        assert_eq!(bytea_from_hex("\\x0"), None);
        assert_eq!(bytea_from_hex("\\xzz"), None);
        assert_eq!(bytea_from_hex("\\xé0"), None);
        assert_eq!(bytea_from_hex("\\x+1"), None);
    }
}
