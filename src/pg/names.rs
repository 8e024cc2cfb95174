//! Identifiers: how mm_conflict names a table, in SQL it writes and in what it stores.
//!
//! Two forms, both independent of the session (`quote_all_identifiers`, `search_path`) and of the
//! PostgreSQL major's keyword list, since nodes compare them and may run different majors:
//! * [`sql_ident`]: an identifier for SQL text, always double-quoted (valid whatever it is);
//! * [`identity`]: a relation's stable name, `schema.table`, a part double-quoted only when it is
//!   not a plain lower-case name. Tombstones, key locks and conflict reports name tables this way.

use std::ffi::CStr;

use pgrx::pg_sys;

/// A NUL-terminated string owned by PostgreSQL, copied out.
///
/// # Safety
/// `ptr` points to a NUL-terminated string valid for the call.
pub unsafe fn cstr_to_string(ptr: *const std::ffi::c_char) -> String {
    // SAFETY: the caller guarantees a valid NUL-terminated string.
    unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}

pub use mm_conflict_core::sql::{bytea_from_hex, bytea_hex, sql_ident, sql_literal};

fn plain(part: &str) -> bool {
    let mut chars = part.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn identity_part(part: &str) -> String {
    if plain(part) {
        part.to_string()
    } else {
        sql_ident(part)
    }
}

/// The stable name of relation `name` in schema `schema` (see the module doc).
pub fn identity(schema: &str, name: &str) -> String {
    format!("{}.{}", identity_part(schema), identity_part(name))
}

/// `"schema"."table"`: a relation's name for SQL text.
pub fn sql_qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", sql_ident(schema), sql_ident(name))
}

/// Schema and name of an open relation.
///
/// # Safety
/// `rel` must be open.
pub unsafe fn relation_names(rel: pg_sys::Relation) -> (String, String) {
    // SAFETY: rd_rel is valid for an open relation; get_namespace_name returns a palloc'd copy.
    unsafe {
        let schema = cstr_to_string(pg_sys::get_namespace_name((*(*rel).rd_rel).relnamespace));
        let relname = cstr_to_string((*(*rel).rd_rel).relname.data.as_ptr());
        (schema, relname)
    }
}

/// Schema and name of relation `relid` (`None` when it does not exist). Catalog lookups: in a
/// transaction, as everything SQL calls runs.
pub fn names_of(relid: pg_sys::Oid) -> Option<(String, String)> {
    // SAFETY: lsyscache lookups return NULL for a missing relation, palloc'd strings otherwise.
    unsafe {
        let name = pg_sys::get_rel_name(relid);
        if name.is_null() {
            return None;
        }
        let schema = pg_sys::get_namespace_name(pg_sys::get_rel_namespace(relid));
        (!schema.is_null()).then(|| (cstr_to_string(schema), cstr_to_string(name)))
    }
}

/// The parts of a stable name ([`identity`]), unquoted; `None` if it is not one.
pub fn parse_identity(text: &str) -> Option<(String, String)> {
    let mut parts = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    '"' => break,
                    c => part.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                part.push(c);
                chars.next();
            }
            if !plain(&part) {
                return None;
            }
        }
        parts.push(part);
        match chars.next() {
            None => break,
            Some('.') => continue,
            Some(_) => return None,
        }
    }
    match <[String; 2]>::try_from(parts) {
        Ok([schema, name]) => Some((schema, name)),
        Err(_) => None,
    }
}

/// FNV-1a: a stable hash, the same in every backend and on every node.
pub fn stable_hash(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The schema and name of function `function` (`None`: it does not exist).
pub fn function_name(function: pg_sys::Oid) -> Option<(pg_sys::Oid, String)> {
    // SAFETY: syscache lookups by oid; a missing function gives InvalidOid / NULL, and the name
    // is a palloc'd copy read here.
    unsafe {
        let name = pg_sys::get_func_name(function);
        (!name.is_null()).then(|| (pg_sys::get_func_namespace(function), cstr_to_string(name)))
    }
}

/// Whether function `function` exists and is named `name` (whatever its schema): one syscache
/// lookup.
pub fn function_is_named(function: pg_sys::Oid, name: &CStr) -> bool {
    // SAFETY: a syscache lookup by oid; a missing function gives NULL, and the name is a palloc'd
    // NUL-terminated copy compared here.
    unsafe {
        let found = pg_sys::get_func_name(function);
        !found.is_null() && CStr::from_ptr(found) == name
    }
}

/// A type's name, as `format_type` writes it (a catalog lookup: in a transaction, as everything
/// SQL calls runs).
pub fn type_name(typid: pg_sys::Oid) -> String {
    // SAFETY: format_type_be handles any oid and returns a palloc'd string.
    unsafe { cstr_to_string(pg_sys::format_type_be(typid)) }
}

/// A type's name with its modifier (`timestamp(3) with time zone`), as `format_type` writes it
/// (a catalog lookup: in a transaction).
pub fn type_name_with_modifier(typid: pg_sys::Oid, typmod: i32) -> String {
    // SAFETY: format_type_with_typemod handles any oid and modifier; it returns a palloc'd string.
    unsafe { cstr_to_string(pg_sys::format_type_with_typemod(typid, typmod)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_quote_only_what_is_not_plain() {
        assert_eq!(identity("public", "mm"), "public.mm");
        assert_eq!(identity("public", "user"), "public.user");
        assert_eq!(
            identity("Odd Schema", "Order \"Lines\""),
            "\"Odd Schema\".\"Order \"\"Lines\"\"\""
        );
        assert_eq!(identity("s", "t1_$x"), "s.\"t1_$x\"");
        assert_eq!(identity("s", "1t"), "s.\"1t\"");
    }

    #[test]
    fn identities_parse_back() {
        for (schema, name) in [
            ("public", "mm"),
            ("Odd Schema", "Order \"Lines\""),
            ("a.b", "c"),
        ] {
            assert_eq!(
                parse_identity(&identity(schema, name)),
                Some((schema.to_string(), name.to_string()))
            );
        }
        assert_eq!(parse_identity("public.mm.x"), None);
        assert_eq!(parse_identity("Public.mm"), None);
        assert_eq!(parse_identity("\"unterminated.mm"), None);
        assert_eq!(parse_identity("mm"), None);
    }

    #[test]
    fn sql_quoting() {
        assert_eq!(sql_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(sql_literal("it's"), "'it''s'");
        assert_eq!(sql_literal("a\\b"), "E'a\\\\b'");
    }
}
