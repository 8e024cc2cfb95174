//! The mesh functions that act on this node only: its identity (`node_init`, `this_node`) and the
//! tables it replicates (`replicate_table`, `unreplicate_table`). They run SQL through SPI; every
//! identifier is quoted by `pg::names` and every value passed as a parameter or a literal made by
//! `sql_literal`, once.

use mm_conflict_core::{MAX_NODE_ID, MIN_NODE_ID};
use pgrx::prelude::*;
use pgrx::spi::Spi;

use super::plan::{PUBLICATION, TRIGGER};
use crate::catalog::relinfo;
use crate::error::MmError;
use crate::pg::names::{self, sql_ident, sql_literal};

/// The statement trigger that refuses TRUNCATE on a replicated table.
pub const TRUNCATE_TRIGGER: &str = "!mm_truncate";
/// What the publication sends: never TRUNCATE (refused on replicated tables, and not versioned);
/// a partitioned table's changes as its root's, so that nodes may partition it differently.
const PUBLICATION_OPTIONS: &str =
    "publish = 'insert, update, delete', publish_via_partition_root = true";

/// The first column of the first row of `query` (`None`: no row or NULL). Read-only: unlike
/// pgrx's `Spi::get_one`, it does not assign a transaction id (a subscription's slot creation
/// waits for every transaction that has one).
fn value<T: FromDatum + IntoDatum>(query: &str, args: &[pgrx::datum::DatumWithOid]) -> Option<T> {
    crate::pg::spi::read_one(query, args).unwrap_or_else(|e| internal(&e))
}

/// Runs `sql`, one of mm_conflict's own schema changes (the watch over schema changes of
/// replicated tables lets it pass).
fn run(sql: &str) {
    let _own = crate::pg::flag::OwnDdl::start();
    Spi::run(sql).unwrap_or_else(|e| internal(&e));
}

fn internal(e: &dyn std::fmt::Display) -> ! {
    MmError::Internal {
        what: format!("SPI: {e}"),
    }
    .raise()
}

/// A node id argument, checked.
pub fn check_node_id(value: Option<i64>) -> Result<i16, MmError> {
    match value {
        Some(v) if (MIN_NODE_ID..=MAX_NODE_ID).contains(&v) => Ok(v as i16),
        other => Err(MmError::NodeIdOutOfRange {
            value: other.map_or_else(|| "NULL".into(), |v| v.to_string()),
        }),
    }
}

/// This node's id.
pub fn this_node() -> Result<i16, MmError> {
    value::<i16>("SELECT node_id FROM mm_conflict.node", &[]).ok_or(MmError::NoNodeId)
}

/// Creates dblink beside mm_conflict when it is available but not installed and this role may:
/// the functions that reach peers need it, and creating it in the transaction that sets the node
/// up (not in the one that later creates a replication slot, which would wait for it) is what
/// keeps them from waiting on themselves.
fn create_dblink_if_possible() {
    let superuser = crate::pg::security::is_superuser();
    let wanted = value::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = 'dblink')
            AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'dblink')",
        &[],
    )
    .unwrap_or(false);
    if superuser && wanted {
        if let Some(schema) = extension_schema() {
            run(&format!(
                "CREATE EXTENSION IF NOT EXISTS dblink SCHEMA {}",
                sql_ident(&schema)
            ));
        }
    }
}

/// The schema of the extension mm_conflict (where `mm_resolve` lives).
fn extension_schema() -> Option<String> {
    value::<String>(
        "SELECT n.nspname::text FROM pg_catalog.pg_extension e
           JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
          WHERE e.extname = 'mm_conflict'",
        &[],
    )
}

/// Records this node's id and name; again with the same id, renames it.
pub fn node_init(node_id: Option<i32>, node_name: Option<&str>) -> Result<(), MmError> {
    let id = check_node_id(node_id.map(i64::from))?;
    if node_name.is_some_and(|n| n.trim().is_empty()) {
        return Err(MmError::EmptyNodeName);
    }
    create_dblink_if_possible();
    match value::<i16>("SELECT node_id FROM mm_conflict.node", &[]) {
        None => {
            let name = node_name.map_or_else(|| format!("node{id}"), str::to_string);
            Spi::run_with_args(
                "INSERT INTO mm_conflict.node(node_id, node_name) VALUES ($1, $2)",
                &[id.into(), name.as_str().into()],
            )
            .unwrap_or_else(|e| internal(&e));
        }
        Some(current) if current == id => {
            if let Some(name) = node_name {
                Spi::run_with_args("UPDATE mm_conflict.node SET node_name = $1", &[name.into()])
                    .unwrap_or_else(|e| internal(&e));
            }
        }
        Some(current) => {
            return Err(MmError::NodeIdTaken {
                current: i64::from(current),
                wanted: i64::from(id),
            })
        }
    }
    Ok(())
}

/// A table as the mesh functions need it.
struct Table {
    oid: pg_sys::Oid,
    /// The stable name (tombstones, messages).
    identity: String,
    /// `"schema"."name"`, for SQL text.
    sql: String,
    schema: String,
    relkind: String,
}

fn table(oid: pg_sys::Oid) -> Table {
    let row = Spi::connect(|client| {
        client
            .select(
                "SELECT n.nspname::text, c.relname::text, c.relkind::text
                   FROM pg_catalog.pg_class c
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.oid = $1",
                Some(1),
                &[oid.into()],
            )?
            .first()
            .get_three::<String, String, String>()
    })
    .unwrap_or_else(|e| internal(&e));
    let (Some(schema), Some(name), Some(relkind)) = row else {
        internal(&format!("relation {oid:?} not found"))
    };
    Table {
        oid,
        identity: names::identity(&schema, &name),
        sql: names::sql_qualified(&schema, &name),
        schema,
        relkind,
    }
}

/// The stable name and the SQL name of table `oid`.
pub fn table_names(oid: pg_sys::Oid) -> (String, String) {
    let t = table(oid);
    (t.identity, t.sql)
}

/// The tables of this database with an `mm_resolve` trigger (oid, stable name), by name.
pub fn resolved_tables() -> Vec<(pg_sys::Oid, String)> {
    Spi::connect(|client| {
        let rows = client.select(
            "SELECT DISTINCT tg.tgrelid, n.nspname::text, c.relname::text
               FROM pg_catalog.pg_trigger tg
               JOIN pg_catalog.pg_proc p ON p.oid = tg.tgfoid AND p.proname = 'mm_resolve'
               JOIN pg_catalog.pg_class c ON c.oid = tg.tgrelid AND NOT c.relispartition
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              ORDER BY 2, 3",
            None,
            &[],
        )?;
        let mut out = Vec::new();
        for row in rows {
            let oid: pg_sys::Oid = row.get(1)?.unwrap_or(pg_sys::InvalidOid);
            let schema: String = row.get(2)?.unwrap_or_default();
            let name: String = row.get(3)?.unwrap_or_default();
            out.push((oid, names::identity(&schema, &name)));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .unwrap_or_else(|e| internal(&e))
}

fn in_publication(oid: pg_sys::Oid) -> bool {
    value::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_publication_rel r
                          JOIN pg_catalog.pg_publication p ON p.oid = r.prpubid
                         WHERE p.pubname = $1 AND r.prrelid = $2)",
        &[PUBLICATION.into(), oid.into()],
    )
    .unwrap_or(false)
}

/// Whether this node receives changes from peers: a subscription of this database to
/// mm_conflict's publication (`subscribe`'s, or one made by hand), or a row of `mm_conflict.peer`,
/// read only by a role that may read it. Callable by any role: an ordinary table owner
/// (`unreplicate_table`, the schema watch) may read neither `peer` nor a subscription's conninfo,
/// but may read the rest of `pg_subscription`.
pub(super) fn has_subscriptions() -> bool {
    let subscribed = format!(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_subscription s
                         WHERE s.subdbid OPERATOR(pg_catalog.=) {}
                           AND $1 OPERATOR(pg_catalog.=) ANY (s.subpublications))",
        mm_conflict_core::mesh::THIS_DATABASE
    );
    value::<bool>(&subscribed, &[PUBLICATION.into()]).unwrap_or(false)
        || (value::<bool>(
            "SELECT pg_catalog.has_table_privilege('mm_conflict.peer', 'SELECT')",
            &[],
        )
        .unwrap_or(false)
            && value::<bool>("SELECT EXISTS (SELECT 1 FROM mm_conflict.peer)", &[])
                .unwrap_or(false))
}

fn null(argument: &str) -> MmError {
    MmError::NullArgument {
        function: "replicate_table()".into(),
        argument: argument.into(),
    }
}

/// Makes `tbl` a replicated table on this node: bookkeeping columns, the `"!mm_resolve"` trigger
/// (`ENABLE ALWAYS`), and the publication.
pub fn replicate_table(
    tbl: pg_sys::Oid,
    criterion: Option<&str>,
    method: Option<&str>,
    preferred_node: Option<i32>,
    delta_columns: &[String],
) -> Result<(), MmError> {
    let criterion = criterion.ok_or_else(|| null("criterion"))?;
    let method = method.ok_or_else(|| null("method"))?;
    let me = this_node()?;
    let t = table(tbl);
    // An ordinary table, or a partitioned one (replicated as its root: the trigger on the root is
    // cloned onto every partition, also those attached later).
    if t.relkind != "r" && t.relkind != "p" {
        return Err(MmError::NotATable {
            relation: t.identity,
            function: "replicate_table()".into(),
        });
    }
    if t.schema == "mm_conflict" {
        return Err(MmError::ExtensionTable { table: t.identity });
    }
    let has_pk = value::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index WHERE indrelid = $1 AND indisprimary)",
        &[tbl.into()],
    )
    .unwrap_or(false);
    if !has_pk {
        return Err(MmError::NoPrimaryKey { table: t.identity });
    }
    if let Some(other) = value::<String>(
        "SELECT tg.tgname::text FROM pg_catalog.pg_trigger tg
          WHERE tg.tgrelid = $1 AND NOT tg.tgisinternal AND tg.tgname <> $2
            AND tg.tgfoid IN (SELECT p.oid FROM pg_catalog.pg_proc p WHERE p.proname = 'mm_resolve')
          ORDER BY 1 LIMIT 1",
        &[tbl.into(), TRIGGER.into()],
    ) {
        return Err(MmError::OtherResolveTrigger {
            table: t.identity,
            trigger: other,
        });
    }

    // Bookkeeping columns (existing ones are checked by the trigger's own checks below).
    // Delta columns keep their state in mm_delta (NULL in rows from before: their values are
    // the base every node starts from).
    let delta_state = [(mm_conflict_core::COL_DELTA, "text")];
    let missing: Vec<String> = [
        (mm_conflict_core::COL_ISLOCAL, "boolean"),
        (mm_conflict_core::COL_NODEID, "smallint"),
        (mm_conflict_core::COL_XACTTIME, "timestamptz"),
        (mm_conflict_core::COL_STATTIME, "timestamptz"),
    ]
    .iter()
    .chain(delta_state.iter().filter(|_| !delta_columns.is_empty()))
    .filter(|(name, _)| {
        !value::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
                             WHERE attrelid = $1 AND attname = $2 AND NOT attisdropped)",
            &[tbl.into(), (*name).into()],
        )
        .unwrap_or(false)
    })
    .map(|(name, sql_type)| format!("ADD COLUMN {} {sql_type}", sql_ident(name)))
    .collect();
    if !missing.is_empty() {
        run(&format!("ALTER TABLE {} {}", t.sql, missing.join(", ")));
    }

    // BEFORE triggers fire in name order, and the resolution must come first (a trigger before
    // it would act on changes that then lose).
    let schema = extension_schema().ok_or_else(|| MmError::Internal {
        what: "the extension mm_conflict is not installed".into(),
    })?;
    let mut args = vec![
        sql_literal(&me.to_string()),
        sql_literal(criterion),
        sql_literal(method),
    ];
    if let Some(p) = preferred_node {
        args.push(sql_literal(&p.to_string()));
    }
    for column in delta_columns {
        args.push(sql_literal(&format!(
            "{}{column}",
            mm_conflict_core::DELTA_PREFIX
        )));
    }
    run(&format!(
        "CREATE OR REPLACE TRIGGER {trigger} BEFORE INSERT OR UPDATE OR DELETE ON {table} \
         FOR EACH ROW EXECUTE FUNCTION {schema}.mm_resolve({args})",
        trigger = sql_ident(TRIGGER),
        table = t.sql,
        schema = sql_ident(&schema),
        args = args.join(", ")
    ));
    // ENABLE ALWAYS on a partitioned table reaches its partitions, and partitions attached later
    // take the root's trigger as it is.
    run(&format!(
        "ALTER TABLE {} ENABLE ALWAYS TRIGGER {}",
        t.sql,
        sql_ident(TRIGGER)
    ));
    // TRUNCATE: statement triggers are not cloned onto partitions, so the guard goes on the root
    // and on each leaf there is now; the event trigger `mm_conflict_partitions` guards leaves
    // created or attached later (`guard_new_partitions`).
    guard_truncate(&t.sql);
    if t.relkind == "p" {
        for leaf in crate::pg::partitions::leaf_partitions(tbl) {
            guard_truncate(&table(leaf).sql);
        }
    }
    let earlier = Spi::connect(|client| {
        client
            .select(
                "SELECT tg.tgname::text FROM pg_catalog.pg_trigger tg
                  WHERE tg.tgrelid = $1 AND NOT tg.tgisinternal
                    AND tg.tgtype & 3 = 3              -- BEFORE ... FOR EACH ROW
                    AND tg.tgname COLLATE \"C\" < $2
                  ORDER BY 1",
                None,
                &[tbl.into(), TRIGGER.into()],
            )
            .map(|rows| {
                rows.filter_map(|row| row.get::<String>(1).ok().flatten())
                    .collect::<Vec<_>>()
            })
    })
    .unwrap_or_else(|e| internal(&e));
    for trigger in earlier {
        MmError::TriggerFiresFirst {
            table: t.identity.clone(),
            trigger,
        }
        .warn();
    }
    // Raises what the trigger would raise on its first row (bad policy, mistyped columns).
    check_table(tbl)?;
    // Keys drawn from sequences never collide between nodes.
    super::sequences::make_node_safe(tbl, &t.identity, &t.sql, i64::from(me))?;

    let publication_exists = value::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1)",
        &[PUBLICATION.into()],
    )
    .unwrap_or(false);
    if !publication_exists {
        run(&format!(
            "CREATE PUBLICATION {} FOR TABLE mm_conflict.tombstone WITH ({PUBLICATION_OPTIONS})",
            sql_ident(PUBLICATION),
        ));
    } else {
        // A publication made by 0.1.0 also sent TRUNCATE, and partitions as themselves.
        run(&format!(
            "ALTER PUBLICATION {} SET ({PUBLICATION_OPTIONS})",
            sql_ident(PUBLICATION),
        ));
    }
    if !in_publication(tbl) {
        run(&format!(
            "ALTER PUBLICATION {} ADD TABLE {}",
            sql_ident(PUBLICATION),
            t.sql
        ));
    }
    Ok(())
}

/// Puts the TRUNCATE guard on table `target` (SQL name), firing in every session.
fn guard_truncate(target: &str) {
    run(&format!(
        "CREATE OR REPLACE TRIGGER {trigger} BEFORE TRUNCATE ON {target} \
         FOR EACH STATEMENT EXECUTE FUNCTION mm_conflict.truncate_guard()",
        trigger = sql_ident(TRUNCATE_TRIGGER),
    ));
    run(&format!(
        "ALTER TABLE {target} ENABLE ALWAYS TRIGGER {}",
        sql_ident(TRUNCATE_TRIGGER)
    ));
}

/// After `CREATE TABLE` of `tbl` (the event trigger `mm_conflict_partitions`): every leaf of its
/// partition tree that carries an `mm_resolve` cloned from a replicated root (a partition created
/// since) and lacks the TRUNCATE guard gets it. Not after ALTER TABLE: a restore's
/// `ALTER TABLE ... ENABLE ALWAYS TRIGGER` would add guards that the dump then creates itself. One catalog query
/// when there is nothing to do. Returns how many leaves were guarded.
pub fn guard_new_partitions(tbl: pg_sys::Oid) -> usize {
    let leaves = Spi::connect(|client| {
        client
            .select(
                "SELECT t.relid FROM pg_catalog.pg_partition_tree($1) t
                  WHERE t.isleaf
                    AND EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g
                                 WHERE g.tgrelid = t.relid AND g.tgname = $2
                                   AND g.tgparentid <> 0)
                    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g
                                     WHERE g.tgrelid = t.relid AND g.tgname = $3)",
                None,
                &[tbl.into(), TRIGGER.into(), TRUNCATE_TRIGGER.into()],
            )
            .map(|rows| {
                rows.filter_map(|row| row.get::<pg_sys::Oid>(1).ok().flatten())
                    .collect::<Vec<_>>()
            })
    })
    .unwrap_or_else(|e| internal(&e));
    for leaf in &leaves {
        guard_truncate(&table(*leaf).sql);
    }
    leaves.len()
}

/// Raises the error `mm_resolve` would raise on its first row of `tbl`, if any: bad trigger
/// arguments, missing or mistyped bookkeeping or criterion columns, no primary key.
pub fn check_table(tbl: pg_sys::Oid) -> Result<(), MmError> {
    // Opened and locked here, closed when `rel` drops.
    let rel = crate::pg::relation::Opened::relation(tbl, pg_sys::AccessShareLock);
    let table = crate::pg::relation::identity(&rel);
    let Some(info) = relinfo::lookup_for(&rel)? else {
        return Err(MmError::NotReplicated { table });
    };
    if info.primary_key.is_none() {
        return Err(MmError::NoPrimaryKey { table });
    }
    Ok(())
}

/// Stops replicating `tbl` on this node: drops the trigger, removes the table from the
/// publication, deletes its tombstones here (peers skip replicated deletes of tombstones).
pub fn unreplicate_table(tbl: pg_sys::Oid) -> Result<(), MmError> {
    this_node()?;
    let t = table(tbl);
    // On a running mesh, peers must stop sending the table first (see the error's HINT).
    if in_publication(t.oid) && has_subscriptions() {
        return Err(MmError::UnreplicateInMesh {
            table: t.identity.clone(),
        });
    }
    for trigger in [TRIGGER, TRUNCATE_TRIGGER] {
        run(&format!(
            "DROP TRIGGER IF EXISTS {} ON {}",
            sql_ident(trigger),
            t.sql
        ));
    }
    if t.relkind == "p" {
        for leaf in crate::pg::partitions::leaf_partitions(tbl) {
            run(&format!(
                "DROP TRIGGER IF EXISTS {} ON {}",
                sql_ident(TRUNCATE_TRIGGER),
                table(leaf).sql
            ));
        }
    }
    if in_publication(t.oid) {
        run(&format!(
            "ALTER PUBLICATION {} DROP TABLE {}",
            sql_ident(PUBLICATION),
            t.sql
        ));
    }
    Spi::run_with_args(
        "DELETE FROM mm_conflict.tombstone WHERE table_name = $1",
        &[t.identity.as_str().into()],
    )
    .unwrap_or_else(|e| internal(&e));
    Ok(())
}

/// This node's replicated tables (stable names) with the policy of their trigger (its arguments
/// after the node id).
pub fn mesh_tables() -> Vec<(String, mm_conflict_core::mesh::TablePolicy)> {
    Spi::connect(|client| {
        client
            .select(
                "SELECT n.nspname::pg_catalog.text, c.relname::pg_catalog.text, tg.tgargs
                   FROM pg_catalog.pg_trigger tg
                   JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) tg.tgrelid
                   JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
                  WHERE tg.tgname OPERATOR(pg_catalog.=) $1 AND tg.tgparentid OPERATOR(pg_catalog.=) 0
                  ORDER BY 1, 2",
                None,
                &[TRIGGER.into()],
            )?
            .map(|row| {
                let schema: String = row.get(1)?.unwrap_or_default();
                let name: String = row.get(2)?.unwrap_or_default();
                let raw: Vec<u8> = row.get(3)?.unwrap_or_default();
                // tgargs: each argument followed by a NUL byte.
                let args: Vec<String> = raw
                    .split(|&b| b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
                Ok((
                    crate::pg::names::identity(&schema, &name),
                    mm_conflict_core::mesh::TablePolicy {
                        criterion: arg(1),
                        method: arg(2),
                        preferred_node: args.get(3).and_then(|p| p.parse().ok()),
                        delta_columns: args
                            .iter()
                            .skip(3)
                            .filter_map(|a| a.strip_prefix(mm_conflict_core::DELTA_PREFIX))
                            .map(str::to_string)
                            .collect(),
                    },
                ))
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .unwrap_or_else(|e| internal(&e))
}

/// Drops replication slot `slot` of this database on this node, ending the walsender that holds
/// it (its subscriber is gone); nothing when there is none. `55006` when it is taken again and
/// again.
pub fn drop_slot(slot: &str) -> Result<(), MmError> {
    for _ in 0..100 {
        let holder = value::<String>(
            "SELECT COALESCE(active_pid::pg_catalog.text, 'free') FROM pg_catalog.pg_replication_slots
              WHERE slot_name = $1::pg_catalog.name AND database = pg_catalog.current_database()",
            &[slot.into()],
        );
        match holder.as_deref() {
            None => return Ok(()),
            Some("free") => {
                // Taken again meanwhile: the drop fails, and the next round ends the holder.
                let dropped = crate::pg::subxact::catching(|| {
                    value::<String>(
                        "SELECT pg_catalog.pg_drop_replication_slot($1::pg_catalog.name)::pg_catalog.text",
                        &[slot.into()],
                    )
                });
                if dropped.is_ok() {
                    return Ok(());
                }
            }
            Some(pid) => {
                value::<bool>(
                    "SELECT pg_catalog.pg_terminate_backend($1::pg_catalog.int4)",
                    &[pid.into()],
                );
            }
        }
        crate::pg::spi::sleep_ms(100);
    }
    Err(MmError::SlotStillActive { slot: slot.into() })
}

/// Drops the replication slots of this database through which node `me` sent its changes to
/// peers (ending their walsenders: `drop_mesh` has dropped the publication, nothing reads them any
/// more); returns what could not be done, one line per slot.
pub fn drop_slots_of(me: i64) -> Vec<String> {
    use mm_conflict_core::mesh::parse_channel;
    let slots: Vec<String> = Spi::connect(|client| {
        client
            .select(
                "SELECT slot_name::pg_catalog.text FROM pg_catalog.pg_replication_slots
                  WHERE database OPERATOR(pg_catalog.=) pg_catalog.current_database() ORDER BY 1",
                None,
                &[],
            )?
            .map(|row| Ok(row.get::<String>(1)?.unwrap_or_default()))
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .unwrap_or_else(|e| internal(&e));
    slots
        .into_iter()
        .filter(|slot| parse_channel(slot).is_some_and(|(from, _)| from == me))
        .filter_map(|slot| {
            drop_slot(&slot).err().map(|_| {
                format!(
                    "replication slot {slot} on this node is still in use; drop it with SELECT pg_drop_replication_slot({})",
                    sql_literal(&slot)
                )
            })
        })
        .collect()
}

/// Waits until every slot through which `peers` (`None`: every peer) read from this node has
/// confirmed the WAL insert position at the call, flushed first (with `synchronous_commit = off` a commit this
/// session just made may lie past the write position). `false` after `timeout_ms`. A named peer
/// without a slot here has not confirmed anything; without names, only existing slots count.
pub fn wait_for_peers(peers: Option<&[i64]>, timeout_ms: i64) -> Result<bool, MmError> {
    use mm_conflict_core::mesh::{channel_name, parse_channel};
    let me = i64::from(this_node()?);
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms.max(0) as u64);
    // Flushed, so that peers can confirm it even when this transaction has written (see there).
    let target = crate::pg::wal::flushed_insert_position();
    loop {
        let slots: Vec<(String, bool)> = Spi::connect(|client| {
            client
                .select(
                    "SELECT slot_name::pg_catalog.text,
                            COALESCE(confirmed_flush_lsn OPERATOR(pg_catalog.>=) $1::pg_catalog.pg_lsn, false)
                       FROM pg_catalog.pg_replication_slots
                      WHERE database = pg_catalog.current_database()",
                    None,
                    &[target.as_str().into()],
                )?
                .map(|row| Ok((row.get::<String>(1)?.unwrap_or_default(), row.get::<bool>(2)?.unwrap_or(false))))
                .collect::<Result<Vec<_>, pgrx::spi::Error>>()
        })
        .unwrap_or_else(|e| internal(&e));
        let behind = match peers {
            None => slots.iter().any(|(name, done)| {
                !done && parse_channel(name).is_some_and(|(from, _)| from == me)
            }),
            Some(peers) => peers.iter().any(|&peer| {
                let name = channel_name(me, peer);
                !slots.iter().any(|(slot, done)| *done && *slot == name)
            }),
        };
        if !behind {
            return Ok(true);
        }
        if std::time::Instant::now() >= deadline {
            return Ok(false);
        }
        crate::pg::spi::sleep_ms(10);
    }
}
