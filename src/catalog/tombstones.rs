//! `mm_conflict.tombstone`: one row per deleted key of a replicated table (its stable name, the
//! key in binary form, the delete's version and the table's order). Replicated with the tables.
//!
//! Reads go straight to the heap and the primary-key index (no permission check, no SQL). A local
//! delete's tombstone is written the same way (`pg::heap`: a heap insert and its index entry),
//! which is what an INSERT would do there: the table's own triggers pass local inserts untouched.
//! Other writes are prepared statements run with the rights of the table's owner (the extension's
//! owner). So any role that may delete from a replicated table records its tombstones, while no
//! ordinary role can write tombstones directly.

use std::cell::RefCell;
use std::rc::Rc;

use mm_conflict_core::{Direction, RowStamps, Tombstone, Version, VersionOrder};
use pgrx::pg_sys;

use crate::error::MmError;
use crate::pg::heap::{DirectInsert, Inserted, OnDuplicate};
use crate::pg::is_replicated_session;
use crate::pg::key::IndexKey;
use crate::pg::names::{self, stable_hash};
use crate::pg::probe::{self, Probe};
use crate::pg::relation::{self, ColumnInfo, Opened};
use crate::pg::scan;
use crate::pg::spi::CachedPlan;
use crate::pg::tuple::{TupleRef, Typed};

pub struct TombstoneTable {
    relid: pg_sys::Oid,
    pk: IndexKey,
    att_table_name: pg_sys::AttrNumber,
    att_pk: pg_sys::AttrNumber,
    att_criterion: pg_sys::AttrNumber,
    att_xacttime: pg_sys::AttrNumber,
    att_stattime: pg_sys::AttrNumber,
    att_nodeid: pg_sys::AttrNumber,
    att_order_last: pg_sys::AttrNumber,
    att_order_winner: pg_sys::AttrNumber,
    att_order_preferred: pg_sys::AttrNumber,
    /// Writes a local delete's tombstone without the executor; `None` when the table is not as
    /// CREATE EXTENSION made it (another column, trigger, index, ...): then `insert` runs.
    direct: Option<(DirectInsert, pg_sys::AttrNumber)>,
    /// Inserts a key's tombstone (after `remove` of an older one).
    insert: CachedPlan,
    /// Removes the key's stored tombstone before a newer one is inserted. A tombstone is never
    /// replaced by an UPDATE: a node that purged the old one would skip the UPDATE (no row), while
    /// it resolves an INSERT; and peers skip the replicated DELETE, as they skip purges.
    remove: CachedPlan,
}

thread_local! {
    static TABLE: RefCell<Option<Rc<TombstoneTable>>> = const { RefCell::new(None) };
}

/// Forgets the cached table description when the table changes.
pub fn invalidate(relid: pg_sys::Oid) {
    TABLE.with(|t| {
        if let Ok(mut table) = t.try_borrow_mut() {
            if relid == pg_sys::InvalidOid || table.as_ref().is_some_and(|x| x.relid == relid) {
                *table = None;
            }
        }
    });
}

const COLUMNS: &str =
    "table_name, pk, criterion, mm_last_xacttime, mm_last_stattime, mm_nodeid, order_last, order_winner, order_preferred";

const COLUMN_NAMES: [&str; 9] = [
    "table_name",
    "pk",
    "criterion",
    "mm_last_xacttime",
    "mm_last_stattime",
    "mm_nodeid",
    "order_last",
    "order_winner",
    "order_preferred",
];

fn damaged(detail: String) -> MmError {
    MmError::ExtensionDamaged {
        object: "table mm_conflict.tombstone".into(),
        detail,
    }
}

/// The tombstone table's description, looked up once per backend.
pub fn table() -> Result<Rc<TombstoneTable>, MmError> {
    if let Some(t) = TABLE.with(|t| t.borrow().clone()) {
        return Ok(t);
    }
    let table = {
        let Some(relid) = relation::extension_table(c"tombstone") else {
            return Err(damaged("It does not exist.".into()));
        };
        let rel = Opened::table(relid, pg_sys::AccessShareLock);
        let live = rel.columns();
        let owner = relation::owner(&rel);
        let mut atts = [0; COLUMN_NAMES.len()];
        for (att, name) in atts.iter_mut().zip(COLUMN_NAMES) {
            *att = match live.iter().find(|c| c.name == name) {
                Some(c) => c.attnum,
                None => return Err(damaged(format!("Its column \"{name}\" is missing."))),
            };
        }
        let pk = IndexKey::of(&rel);
        let direct = direct_insert(&rel, &live);
        drop(rel);
        let Some(pk) = pk else {
            return Err(damaged("Its primary key is missing.".into()));
        };
        let types = vec![
            pg_sys::TEXTOID,
            pg_sys::BYTEAOID,
            pg_sys::TIMESTAMPTZOID,
            pg_sys::TIMESTAMPTZOID,
            pg_sys::TIMESTAMPTZOID,
            pg_sys::INT2OID,
            pg_sys::BOOLOID,
            pg_sys::INT2OID,
            pg_sys::INT2OID,
        ];
        let [att_table_name, att_pk, att_criterion, att_xacttime, att_stattime, att_nodeid, att_order_last, att_order_winner, att_order_preferred] =
            atts;
        Rc::new(TombstoneTable {
            relid,
            pk,
            att_table_name,
            att_pk,
            att_criterion,
            att_xacttime,
            att_stattime,
            att_nodeid,
            att_order_last,
            att_order_winner,
            att_order_preferred,
            direct,
            insert: CachedPlan::new(
                format!(
                    "INSERT INTO mm_conflict.tombstone ({COLUMNS}, deleted_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, pg_catalog.now())"
                ),
                types.clone(),
            )
            .run_as(owner),
            remove: CachedPlan::new(
                "DELETE FROM mm_conflict.tombstone \
                 WHERE table_name OPERATOR(pg_catalog.=) $1 AND pk OPERATOR(pg_catalog.=) $2"
                    .to_string(),
                types[..2].to_vec(),
            )
            .run_as(owner),
        })
    };
    TABLE.with(|t| *t.borrow_mut() = Some(Rc::clone(&table)));
    Ok(table)
}

/// The direct insert of the tombstone table (`rel`, with its `live` columns) and its `deleted_at`
/// column, when every live column is one `insert` fills and its only triggers are the
/// extension's two.
fn direct_insert(rel: &Opened, live: &[ColumnInfo]) -> Option<(DirectInsert, pg_sys::AttrNumber)> {
    let deleted_at = live.iter().find(|c| c.name == "deleted_at")?.attnum;
    let known = live
        .iter()
        .all(|c| c.attnum == deleted_at || COLUMN_NAMES.contains(&c.name.as_str()));
    if !known {
        return None;
    }
    let namespace = relation::namespace(rel);
    let own_trigger = |function: pg_sys::Oid| {
        names::function_name(function).is_some_and(|(schema, name)| {
            schema == namespace && matches!(name.as_str(), "tombstone_resolve" | "tombstone_settle")
        })
    };
    DirectInsert::of(rel, own_trigger).map(|d| (d, deleted_at))
}

/// A tombstone's bucket of marks and its greatest value (criterion value or stamp), if any: what
/// it counts for in [`super::mark`].
fn mark_of(table_name: &[u8], key: &[u8], tombstone: &Tombstone) -> (usize, Option<i64>) {
    let bucket = super::mark::bucket(stable_hash(table_name), key);
    let values = [
        tombstone.version.criterion,
        tombstone.stamps.xacttime,
        tombstone.stamps.stattime,
    ];
    (bucket, values.into_iter().flatten().max())
}

/// Raises the mark of `key`'s bucket in table `table_name` to `tombstone`, before it is written
/// (see [`super::mark`]).
pub fn raise_mark(table_name: &[u8], key: &[u8], tombstone: &Tombstone) {
    if let (bucket, Some(value)) = mark_of(table_name, key, tombstone) {
        super::mark::raise(bucket, value);
    }
}

/// Whether every tombstone of `key`'s bucket in table `table_hash` (that is, of this key and of
/// some others), stored or being stored, is below `micros` (its criterion value and stamps): see
/// [`super::mark`]. The first call after the server starts reads the whole tombstone table, once.
pub fn key_below(table_hash: u32, key: &[u8], micros: i64) -> bool {
    super::mark::below(super::mark::bucket(table_hash, key), micros, || {
        let table = table().ok()?;
        let mut highest = Box::new([i64::MIN; super::mark::BUCKETS]);
        // Opened here and kept locked until transaction end. SnapshotAny: rows still being
        // written and rows deleted but not yet vacuumed count too (a bound that is too high only
        // costs a probe).
        let rel = Opened::table(table.relid, pg_sys::AccessShareLock);
        scan::each_version(&rel, |tuple| {
            let (name, key) = table.name_and_key(tuple);
            if let (bucket, Some(value)) = mark_of(&name, &key, &table.read(tuple)) {
                highest[bucket] = highest[bucket].max(value);
            }
        });
        Some(highest)
    })
}

impl TombstoneTable {
    /// The table's oid.
    pub fn relid(&self) -> pg_sys::Oid {
        self.relid
    }

    /// Reads a tombstone row (a tuple of the tombstone table, whose columns `table()` found).
    pub fn read(&self, tuple: TupleRef) -> Tombstone {
        let get = |attnum| tuple.get(attnum);
        let time = |attnum| get(attnum).map(|d| d.value() as i64);
        let node = |attnum| get(attnum).map(|d| d.value() as i16);
        Tombstone {
            version: Version {
                criterion: time(self.att_criterion),
                stattime: time(self.att_stattime),
                node: node(self.att_nodeid),
            },
            stamps: RowStamps {
                xacttime: time(self.att_xacttime),
                stattime: time(self.att_stattime),
                node: node(self.att_nodeid),
                user_criterion: None,
            },
            order: VersionOrder {
                direction: if get(self.att_order_last).is_some_and(|d| d.value() != 0) {
                    Direction::Last
                } else {
                    Direction::First
                },
                winner: node(self.att_order_winner),
                preferred: node(self.att_order_preferred),
            },
        }
    }

    /// The table name and key of a tombstone row (both NOT NULL text/bytea columns).
    pub fn name_and_key(&self, tuple: TupleRef) -> (Vec<u8>, Vec<u8>) {
        let bytes = |attnum| tuple.bytes(attnum).unwrap_or_default();
        (bytes(self.att_table_name), bytes(self.att_pk))
    }

    /// The tombstone of `key` in table `table_name`, seeing tombstones still being written.
    /// The caller holds the key lock.
    pub fn probe(&self, table_name: &[u8], key: &[u8]) -> Probe<Tombstone> {
        // An empty table (the common case before the first delete) needs no index scan. (Its size
        // is read for every row: a tombstone an apply worker commits while a local statement runs
        // must be seen by that statement's later rows, or the row is stamped below it.)
        // Opened here and kept locked until transaction end.
        let rel = Opened::table(self.relid, pg_sys::AccessShareLock);
        if relation::is_empty(&rel) {
            return Probe::Absent;
        }
        let values = [Typed::text(table_name), Typed::bytea(key)];
        probe::probe(&rel, &self.pk, &values, &|tuple| self.read(tuple))
    }

    /// Inserts `tombstone` as the tombstone of `key` in `table_name` (the caller removed an older
    /// one and holds the key lock).
    /// Returns whether it was stored (the tombstone table's trigger skips one that loses to the
    /// key's stored tombstone, in apply sessions).
    pub fn insert(&self, table_name: &[u8], key: &[u8], tombstone: &Tombstone) -> bool {
        let values = Self::values(table_name, key, tombstone);
        match self.insert_direct(table_name, key, tombstone, &values, OnDuplicate::Raise) {
            Inserted::Stored => return true,
            Inserted::Duplicate => unreachable!("OnDuplicate::Raise raises"),
            Inserted::Changed => {}
        }
        self.insert.execute(&values, pg_sys::SPI_OK_INSERT) > 0
    }

    /// Inserts `tombstone` as the tombstone of `key` in `table_name` if no tombstone of the key is
    /// stored (the caller holds the key lock), in one descent of the primary key instead of a
    /// lookup and then the insert; true when it did. False, with nothing visible written, when
    /// the key has a stored tombstone (or one being written), or when the row can only be
    /// written by an INSERT (in apply sessions, where the table's triggers resolve it; when the
    /// table has changed): then the caller looks the key up, removes what it finds, and calls
    /// [`TombstoneTable::insert`].
    pub fn insert_new(&self, table_name: &[u8], key: &[u8], tombstone: &Tombstone) -> bool {
        let values = Self::values(table_name, key, tombstone);
        self.insert_direct(table_name, key, tombstone, &values, OnDuplicate::StepBack)
            == Inserted::Stored
    }

    /// The INSERT statement's arguments for `tombstone` (all columns but `deleted_at`).
    fn values(table_name: &[u8], key: &[u8], tombstone: &Tombstone) -> [Option<Typed>; 9] {
        let (version, stamps, order) = (&tombstone.version, &tombstone.stamps, &tombstone.order);
        [
            Some(Typed::text(table_name)),
            Some(Typed::bytea(key)),
            version.criterion.map(Typed::timestamptz),
            stamps.xacttime.map(Typed::timestamptz),
            stamps.stattime.map(Typed::timestamptz),
            version.node.map(Typed::int2),
            Some(Typed::bool(order.direction == Direction::Last)),
            order.winner.map(Typed::int2),
            order.preferred.map(Typed::int2),
        ]
    }

    /// Writes the row of `values` as an INSERT of them would, without the INSERT
    /// ([`DirectInsert`]), outside apply sessions; [`Inserted::Changed`] when it cannot.
    fn insert_direct(
        &self,
        table_name: &[u8],
        key: &[u8],
        tombstone: &Tombstone,
        values: &[Option<Typed>; 9],
        on_duplicate: OnDuplicate,
    ) -> Inserted {
        let Some((direct, deleted_at)) = self.direct.as_ref().filter(|_| !is_replicated_session())
        else {
            return Inserted::Changed;
        };
        // Outside apply sessions the table's triggers let an insert pass untouched (and
        // `tombstone_settle` does nothing): the same row as the INSERT's, at a fraction of its
        // cost. In apply sessions they resolve it against the key's stored tombstone.
        let mut row = vec![None; direct.natts()];
        let attnums = [
            self.att_table_name,
            self.att_pk,
            self.att_criterion,
            self.att_xacttime,
            self.att_stattime,
            self.att_nodeid,
            self.att_order_last,
            self.att_order_winner,
            self.att_order_preferred,
        ];
        for (attnum, value) in attnums.into_iter().zip(values) {
            row[attnum as usize - 1] = *value;
        }
        raise_mark(table_name, key, tombstone);
        // now() of the transaction, as the column's default.
        let now = crate::pg::backend::transaction_start();
        row[*deleted_at as usize - 1] = Some(Typed::timestamptz(now));
        // `Changed`: the table changed since it was described (the relcache callback has
        // dropped the description already): the caller's INSERT does what the change asks for.
        direct.insert(&row, on_duplicate)
    }

    /// Deletes the stored tombstone of `key` in `table_name` (the caller holds the key lock and
    /// marks the delete as mm_conflict's own write, which the table's trigger lets pass).
    pub fn remove(&self, table_name: &[u8], key: &[u8]) {
        let values = [Some(Typed::text(table_name)), Some(Typed::bytea(key))];
        self.remove.execute(&values, pg_sys::SPI_OK_DELETE);
    }
}
