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
use crate::pg::relation::{self, Opened};
use crate::pg::trigger::Firing;
use crate::pg::tuple::TupleRef;
use crate::pg::{is_replicated_session, key, subxact};
use crate::pg::{names, partitions};
use crate::report;

/// Checks that a tombstone trigger fires where CREATE EXTENSION put it: on
/// `mm_conflict.tombstone`, FOR EACH ROW, at `timing`. Anywhere else (a table owner may attach the
/// function to a table of its own) it would read that table's tuples with the tombstone table's
/// column numbers.
pub fn check_firing(firing: &Firing, function: &str, timing: u32) -> Result<(), MmError> {
    let table = tombstones::table()?;
    let event = firing.event();
    if firing.relid() == table.relid()
        && event & pg_sys::TRIGGER_EVENT_TIMINGMASK == timing
        && event & pg_sys::TRIGGER_EVENT_ROW != 0
        && event & pg_sys::TRIGGER_EVENT_OPMASK != pg_sys::TRIGGER_EVENT_TRUNCATE
    {
        return Ok(());
    }
    let expected = if timing == pg_sys::TRIGGER_EVENT_BEFORE {
        "BEFORE INSERT OR UPDATE OR DELETE FOR EACH ROW"
    } else {
        "AFTER INSERT OR UPDATE FOR EACH ROW"
    };
    Err(MmError::TriggerOnWrongTable {
        function: function.into(),
        expected: expected.into(),
        fired: super::describe_event(event),
        table: relation::identity(firing.relation()),
    })
}

/// BEFORE INSERT OR UPDATE OR DELETE on `mm_conflict.tombstone`: returns the tuple to write, or
/// `None` to skip it. Local writes pass; replicated ones are resolved against the stored
/// tombstone; replicated deletes (purges elsewhere) are skipped.
pub fn resolve<'a>(firing: &Firing<'a>) -> Result<Option<TupleRef<'a>>, MmError> {
    check_firing(
        firing,
        "mm_conflict.tombstone_resolve",
        pg_sys::TRIGGER_EVENT_BEFORE,
    )?;
    let op = firing.event() & pg_sys::TRIGGER_EVENT_OPMASK;
    let replicated = is_replicated_session();
    if replicated {
        report::progress::watch();
    }
    // A row-level firing has its row; an UPDATE its new one too (checked above).
    let old = firing.row().expect("a row trigger has its row");
    if op == pg_sys::TRIGGER_EVENT_DELETE {
        return Ok(engine::tombstone_deleted(replicated, OwnWrite::active()).then_some(old));
    }
    let written = if op == pg_sys::TRIGGER_EVENT_UPDATE {
        firing.new_row().expect("an UPDATE trigger has its new row")
    } else {
        old
    };
    // The tombstone about to be written, read once. Whatever becomes of it, it counts toward its
    // key's mark first (a local INSERT above the mark skips its probe: see catalog::mark).
    let table = tombstones::table()?;
    let (name, key) = table.name_and_key(written);
    let new = table.read(written);
    tombstones::raise_mark(&name, &key, &new);
    match op {
        pg_sys::TRIGGER_EVENT_INSERT | pg_sys::TRIGGER_EVENT_UPDATE if !replicated => {
            Ok(Some(written))
        }
        pg_sys::TRIGGER_EVENT_UPDATE => {
            Ok(engine::tombstone_updated(&table.read(old), &new).then_some(written))
        }
        _ => {
            let mut store = KeyTombstones::new(&name, &key)?;
            Ok(engine::tombstone_arrives(&mut store, &new).then_some(old))
        }
    }
}

/// AFTER INSERT OR UPDATE on `mm_conflict.tombstone`, in replicated sessions: a tombstone that is
/// new on this node (it got past [`resolve`]) settles this node's row of the key. A tombstone
/// that cannot be resolved here (it names something that is not a table, or its key does not
/// decode as the table's key) is ignored with a WARNING and a `conflict_log` row: it never stops
/// the apply worker, which would halt every table of the subscription.
///
/// `tuple` is the new tombstone row.
pub fn settle(tuple: TupleRef) -> Result<(), MmError> {
    let table = tombstones::table()?;
    let ((name, key), tombstone) = (table.name_and_key(tuple), table.read(tuple));
    let ignore = |reason: String| {
        let table = String::from_utf8_lossy(&name).into_owned();
        report::log::log_ignored_tombstone(&table, &key, &tombstone.version, &reason);
        MmError::TombstoneIgnored { table, reason }.warn();
        Ok(())
    };
    let Some((schema, relname)) = std::str::from_utf8(&name)
        .ok()
        .and_then(names::parse_identity)
    else {
        return ignore("that is not a table name".into());
    };
    let Some(relid) = relation::oid_of(&schema, &relname) else {
        return Ok(()); // the table does not exist here: nothing to settle
    };
    // A partitioned table is replicated as its root: the row is in one of its leaves.
    let tables = match relation::relkind_of(relid) {
        Some(pg_sys::RELKIND_PARTITIONED_TABLE) => partitions::leaf_partitions(relid),
        Some(pg_sys::RELKIND_RELATION) => vec![relid],
        _ => return ignore("it names a relation that is not a table on this node".into()),
    };
    for relid in tables {
        // Opened and locked here, kept locked until transaction end.
        let rel = Opened::table(relid, pg_sys::RowExclusiveLock);
        if let Some(reason) = settle_row(&rel, key.clone(), &tombstone)? {
            return ignore(reason);
        }
    }
    Ok(())
}

/// Settles `rel`'s row of `key`; `Some(reason)` when the tombstone cannot be resolved here.
fn settle_row(
    rel: &Opened,
    key: Vec<u8>,
    tombstone: &mm_conflict_core::Tombstone,
) -> Result<Option<String>, MmError> {
    let Some(info) = relinfo::lookup_for(rel)? else {
        return Ok(None);
    };
    let Some(pk) = info.primary_key.as_ref() else {
        return Ok(None);
    };
    if key::is_future_format(&key) {
        return Ok(Some(format!(
            "its key is in format {}, which this version does not read",
            key::format_of(&key)
        )));
    }
    // Receive functions raise errors on bytes that are not theirs: in a subtransaction, so
    // that a key that does not decode is reported, not fatal. (Integer keys of the right
    // lengths cannot fail: they need none.)
    let decoded = if pk.decodes_without_error(&key) {
        Ok(pk.decode(&key))
    } else {
        subxact::catching(|| pk.decode(&key))
    };
    let values = match decoded {
        Ok(Some(values)) => values,
        Ok(None) => {
            return Ok(Some(
                "its key does not match the table's primary key".into(),
            ))
        }
        Err(message) => {
            return Ok(Some(format!(
                "its key does not decode as the table's primary key ({message})"
            )))
        }
    };
    let mut store = PgStore::for_key(&info, rel, values, key, false);
    engine::settle(&mut store, &info.policy, tombstone);
    Ok(None)
}
