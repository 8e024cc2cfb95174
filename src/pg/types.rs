//! Catalog facts about types (lookups: in a transaction, as everything SQL calls runs).

use pgrx::pg_sys;

/// The base type of a domain (the type itself otherwise).
pub fn base_type(typid: pg_sys::Oid) -> pg_sys::Oid {
    // SAFETY: a syscache lookup; an unknown oid raises PostgreSQL's error.
    unsafe { pg_sys::getBaseType(typid) }
}

/// The type's `typtype` (`pg_sys::TYPTYPE_*`).
pub fn typtype(typid: pg_sys::Oid) -> u8 {
    // SAFETY: a syscache lookup; an unknown oid raises PostgreSQL's error.
    unsafe { pg_sys::get_typtype(typid) as u8 }
}

/// The element type of an array type (`None`: not an array).
pub fn element_type(typid: pg_sys::Oid) -> Option<pg_sys::Oid> {
    // SAFETY: a syscache lookup; InvalidOid for a type that is not an array.
    let element = unsafe { pg_sys::get_element_type(typid) };
    (element != pg_sys::InvalidOid).then_some(element)
}
