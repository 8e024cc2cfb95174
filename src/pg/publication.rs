//! Whether a table is published: the tables mm_conflict records tombstones for.

use pgrx::pg_sys;

/// True when a publication of this database sends changes of table `relid`: it is a member of
/// one (itself or, for a partition, one of its ancestors), its schema is (`FOR TABLES IN
/// SCHEMA`), or a `FOR ALL TABLES` publication exists and the table is permanent (temporary and
/// unlogged tables are never published).
pub fn is_published(relid: pg_sys::Oid) -> bool {
    // SAFETY: catalog lookups inside a transaction; the lists are palloc'd and only read here.
    unsafe {
        if pg_sys::get_rel_persistence(relid) as u8 != pg_sys::RELPERSISTENCE_PERMANENT {
            return false;
        }
        if !pg_sys::GetAllTablesPublications().is_null() {
            return true;
        }
        let relids = if pg_sys::get_rel_relispartition(relid) {
            super::partitions::ancestors(relid)
        } else {
            vec![relid]
        };
        relids.into_iter().any(|relid| {
            !pg_sys::GetRelationPublications(relid).is_null()
                || !pg_sys::GetSchemaPublications(pg_sys::get_rel_namespace(relid)).is_null()
        })
    }
}
