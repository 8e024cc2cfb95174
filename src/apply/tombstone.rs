//! The tombstone table's triggers: versioned deletes arriving from peers.
//!
//! Peers resolve tombstones against each other like rows ([`resolve`], BEFORE), and a tombstone
//! that is new on a node settles that node's row of the key at once ([`settle`], AFTER): see
//! `engine::tombstone_arrives` and `engine::settle`.
//!
//! Tables are named by their stable name (`pg::names::identity`: never an OID, which differs per
//! node, nor `regclass` text, which depends on `search_path`, empty in apply workers).

use mm_conflict_core::engine;
use pgrx::pg_sys;

use super::store::{KeyTombstones, PgStore};
use super::OwnWrite;
use crate::catalog::{relinfo, tombstones};
use crate::error::MmError;
use crate::pg::{is_replicated_session, key};
use crate::pg::{names, partitions};

/// BEFORE INSERT OR UPDATE OR DELETE on `mm_conflict.tombstone`: returns the tuple to write, or
/// `None` to skip it. Local writes pass; replicated ones are resolved against the stored
/// tombstone; replicated deletes (purges elsewhere) are skipped.
///
/// # Safety
/// `td` must be the `TriggerData` of a firing on the tombstone table.
pub unsafe fn resolve(td: &pg_sys::TriggerData) -> Result<Option<pg_sys::HeapTuple>, MmError> {
    let op = td.tg_event & pg_sys::TRIGGER_EVENT_OPMASK;
    let replicated = is_replicated_session();
    // SAFETY: td and its tuples are valid during the firing; they belong to the tombstone table,
    // described by its rd_att.
    unsafe {
        let tupdesc = (*td.tg_relation).rd_att;
        match op {
            pg_sys::TRIGGER_EVENT_DELETE => {
                Ok(engine::tombstone_deleted(replicated, OwnWrite::active())
                    .then_some(td.tg_trigtuple))
            }
            pg_sys::TRIGGER_EVENT_INSERT if !replicated => Ok(Some(td.tg_trigtuple)),
            pg_sys::TRIGGER_EVENT_UPDATE if !replicated => Ok(Some(td.tg_newtuple)),
            pg_sys::TRIGGER_EVENT_UPDATE => {
                let table = tombstones::table()?;
                let old = table.read(td.tg_trigtuple, tupdesc);
                let new = table.read(td.tg_newtuple, tupdesc);
                Ok(engine::tombstone_updated(&old, &new).then_some(td.tg_newtuple))
            }
            _ => {
                let table = tombstones::table()?;
                let (name, key) = table.name_and_key(td.tg_trigtuple, tupdesc);
                let incoming = table.read(td.tg_trigtuple, tupdesc);
                let mut store = KeyTombstones::new(&name, &key)?;
                Ok(engine::tombstone_arrives(&mut store, &incoming).then_some(td.tg_trigtuple))
            }
        }
    }
}

/// AFTER INSERT OR UPDATE on `mm_conflict.tombstone`, in replicated sessions: a tombstone that is
/// new on this node (it got past [`resolve`]) settles this node's row of the key.
///
/// # Safety
/// `tuple` is the new tombstone row, described by `tupdesc` (the tombstone table's).
pub unsafe fn settle(tuple: pg_sys::HeapTuple, tupdesc: pg_sys::TupleDesc) -> Result<(), MmError> {
    let table = tombstones::table()?;
    // SAFETY: `tuple` is a tombstone row described by `tupdesc` (`# Safety`), as name_and_key and
    // read need; each target relation is opened here, so open and locked for settle_row, and kept
    // locked until transaction end.
    unsafe {
        let (name, key) = table.name_and_key(tuple, tupdesc);
        let tombstone = table.read(tuple, tupdesc);
        let Some((schema, relname)) = std::str::from_utf8(&name)
            .ok()
            .and_then(names::parse_identity)
        else {
            MmError::TombstoneIgnored {
                table: String::from_utf8_lossy(&name).into_owned(),
                reason: "that is not a table name".into(),
            }
            .warn();
            return Ok(());
        };
        let Some(relid) = relation_oid(&schema, &relname) else {
            return Ok(()); // the table does not exist here: nothing to settle
        };
        // A partitioned table is replicated as its root: the row is in one of its leaves.
        let tables = if pg_sys::get_rel_relkind(relid) as u8 == pg_sys::RELKIND_PARTITIONED_TABLE {
            partitions::leaf_partitions(relid)
        } else {
            vec![relid]
        };
        for relid in tables {
            let rel = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
            let result = settle_row(rel, key.clone(), &tombstone);
            pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
            result?;
        }
        Ok(())
    }
}

/// The oid of table `schema.relname`, if it exists.
fn relation_oid(schema: &str, relname: &str) -> Option<pg_sys::Oid> {
    let schema = std::ffi::CString::new(schema).ok()?;
    let relname = std::ffi::CString::new(relname).ok()?;
    // SAFETY: catalog lookups by name inside a transaction; missing_ok returns InvalidOid.
    unsafe {
        let namespace = pg_sys::get_namespace_oid(schema.as_ptr(), true);
        if namespace == pg_sys::InvalidOid {
            return None;
        }
        let relid = pg_sys::get_relname_relid(relname.as_ptr(), namespace);
        (relid != pg_sys::InvalidOid).then_some(relid)
    }
}

/// # Safety
/// `rel` is open and locked.
unsafe fn settle_row(
    rel: pg_sys::Relation,
    key: Vec<u8>,
    tombstone: &mm_conflict_core::Tombstone,
) -> Result<(), MmError> {
    // SAFETY: rel is open and locked by the caller.
    unsafe {
        let Some(info) = relinfo::lookup_for_relation(rel)? else {
            return Ok(());
        };
        let Some(pk) = info.primary_key.as_ref() else {
            return Ok(());
        };
        if key::is_future_format(&key) {
            MmError::TombstoneIgnored {
                table: info.table.clone(),
                reason: format!(
                    "its key is in format {}, which this version does not read",
                    key::format_of(&key)
                ),
            }
            .warn();
            return Ok(());
        }
        let Some(values) = pk.decode(&key) else {
            MmError::TombstoneIgnored {
                table: info.table.clone(),
                reason: "its key does not match the table's primary key".into(),
            }
            .warn();
            return Ok(());
        };
        let mut store = PgStore::for_key(&info, rel, values, key, false);
        engine::settle(&mut store, &info.policy, tombstone);
        Ok(())
    }
}
