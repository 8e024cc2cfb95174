//! Schema changes on this node: what `replicate_ddl` runs here (the trial run of a command,
//! [`probe`], and the command itself, [`apply`]), and the watch over changes of replicated tables
//! made any other way ([`watch`], [`watch_drop`], from the event triggers `mm_conflict_ddl` and
//! `mm_conflict_ddl_drop`).

use mm_conflict_core::ddl::Restriction;
use mm_conflict_core::{COL_ISLOCAL, COL_NODEID, COL_STATTIME, COL_XACTTIME};
use pgrx::prelude::*;
use pgrx::spi::Spi;

use super::plan::{PUBLICATION, TRIGGER};
use crate::error::MmError;
use crate::gucs::{BareDdl, BARE_DDL};
use crate::pg::flag::OwnDdl;
use crate::pg::names::{self, sql_ident};
use crate::pg::spi::read_one;
use crate::pg::subxact::{rolled_back, Caught};

fn internal(e: &dyn std::fmt::Display) -> ! {
    MmError::Internal {
        what: format!("SPI: {e}"),
    }
    .raise()
}

/// A column of a replicated table.
#[derive(Clone, Debug, PartialEq)]
struct Column {
    attnum: i16,
    name: String,
    in_key: bool,
}

/// A replicated table (one with `mm_resolve`, not a partition) as the catalog has it now.
#[derive(Clone, Debug)]
struct Shape {
    oid: pg_sys::Oid,
    identity: String,
    sql: String,
    columns: Vec<Column>,
}

fn replicated_shapes() -> Vec<Shape> {
    let rows: Vec<(pg_sys::Oid, String, String, i16, String, bool)> = Spi::connect(|client| {
        client
            .select(
                "SELECT c.oid, n.nspname::pg_catalog.text, c.relname::pg_catalog.text, a.attnum,
                        a.attname::pg_catalog.text,
                        COALESCE(a.attnum OPERATOR(pg_catalog.=) ANY (i.indkey::pg_catalog.int2[]), false)
                   FROM pg_catalog.pg_trigger tg
                   JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) tg.tgrelid
                   JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
                   JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.oid
                        AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped
                   LEFT JOIN pg_catalog.pg_index i ON i.indrelid OPERATOR(pg_catalog.=) c.oid
                        AND i.indisprimary
                  WHERE tg.tgname OPERATOR(pg_catalog.=) $1
                    AND tg.tgparentid OPERATOR(pg_catalog.=) 0 AND NOT c.relispartition
                  ORDER BY c.oid, a.attnum",
                None,
                &[TRIGGER.into()],
            )?
            .map(|row| {
                Ok((
                    row.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                    row.get::<String>(2)?.unwrap_or_default(),
                    row.get::<String>(3)?.unwrap_or_default(),
                    row.get::<i16>(4)?.unwrap_or_default(),
                    row.get::<String>(5)?.unwrap_or_default(),
                    row.get::<bool>(6)?.unwrap_or(false),
                ))
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .unwrap_or_else(|e| internal(&e));
    let mut shapes: Vec<Shape> = Vec::new();
    for (oid, schema, name, attnum, column, in_key) in rows {
        if shapes.last().is_none_or(|s| s.oid != oid) {
            shapes.push(Shape {
                oid,
                identity: names::identity(&schema, &name),
                sql: names::sql_qualified(&schema, &name),
                columns: Vec::new(),
            });
        }
        if let Some(shape) = shapes.last_mut() {
            shape.columns.push(Column {
                attnum,
                name: column,
                in_key,
            });
        }
    }
    shapes
}

/// Runs `command` here under `search_path` (the caller's), as mm_conflict's own change; the
/// function's own `search_path` is back afterwards.
fn run_command(command: &str, search_path: &str) {
    let _own = OwnDdl::start();
    Spi::run_with_args(
        "SELECT pg_catalog.set_config('search_path', $1, true)",
        &[search_path.into()],
    )
    .unwrap_or_else(|e| internal(&e));
    let ran = crate::pg::subxact::catching_error(|| Spi::run(command));
    Spi::run("SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true)")
        .unwrap_or_else(|e| internal(&e));
    match ran {
        Ok(Ok(())) => {}
        Ok(Err(e)) => internal(&e),
        Err(caught) => raise_command_error(caught),
    }
}

/// The command's own error, as it is; one that says it cannot run in a transaction block (or
/// from a function, which is where it runs) as `DdlNotTransactional`.
fn raise_command_error(caught: Caught) -> ! {
    use pgrx::PgSqlErrorCode::*;
    if matches!(
        caught.state,
        ERRCODE_ACTIVE_SQL_TRANSACTION | ERRCODE_INVALID_TRANSACTION_TERMINATION
    ) {
        MmError::DdlNotTransactional {
            cause: caught.message,
        }
        .raise()
    }
    caught.reraise()
}

/// The trial run of `command` on this node (rolled back; its lock waits bounded by
/// `lock_timeout_ms`): what it makes disappear that peers
/// must stop sending first (`Restriction`s), or why `replicate_ddl` refuses it (a rename; a
/// dropped primary-key column; a command that cannot run in a transaction). The command's own
/// error, if it fails here.
pub fn probe(
    command: &str,
    search_path: &str,
    lock_timeout_ms: i64,
) -> Result<Vec<Restriction>, MmError> {
    let before = replicated_shapes();
    // (An error of the command was raised as it will be raised to the caller.) The setting goes
    // with the rolled-back subtransaction.
    let after = rolled_back(|| {
        Spi::run_with_args(
            "SELECT pg_catalog.set_config('lock_timeout', $1, true)",
            &[format!("{}ms", lock_timeout_ms.max(1)).as_str().into()],
        )
        .unwrap_or_else(|e| internal(&e));
        run_command(command, search_path);
        replicated_shapes()
    })
    .unwrap_or_else(|caught| caught.reraise());
    let mut restrictions = Vec::new();
    for old in &before {
        let Some(new) = after.iter().find(|s| s.oid == old.oid) else {
            restrictions.push(Restriction {
                table: old.sql.clone(),
                keep: None,
            });
            continue;
        };
        if new.identity != old.identity {
            return Err(MmError::DdlRename {
                what: format!("table {} (to {})", old.identity, new.identity),
            });
        }
        let mut gone = false;
        for column in &old.columns {
            match new.columns.iter().find(|c| c.attnum == column.attnum) {
                None if column.in_key => {
                    return Err(MmError::DdlDropsKeyColumn {
                        table: old.identity.clone(),
                        column: column.name.clone(),
                    })
                }
                None => gone = true,
                Some(c) if c.name != column.name => {
                    return Err(MmError::DdlRename {
                        what: format!(
                            "column \"{}\" of table {} (to \"{}\")",
                            column.name, old.identity, c.name
                        ),
                    })
                }
                Some(_) => {}
            }
        }
        if gone {
            restrictions.push(Restriction {
                table: old.sql.clone(),
                keep: Some(
                    old.columns
                        .iter()
                        .filter(|c| new.columns.iter().any(|n| n.attnum == c.attnum))
                        .map(|c| sql_ident(&c.name))
                        .collect(),
                ),
            });
        }
    }
    Ok(restrictions)
}

/// Tables of this database that could join the mesh: ordinary or partitioned, not partitions,
/// permanent, outside the system's and mm_conflict's schemas, without `mm_resolve`.
fn unreplicated_tables() -> Vec<pg_sys::Oid> {
    Spi::connect(|client| {
        client
            .select(
                "SELECT c.oid FROM pg_catalog.pg_class c
                   JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
                  WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
                    AND c.relpersistence OPERATOR(pg_catalog.=) 'p'
                    AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'mm_conflict', 'pg_toast')
                    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger tg
                                     WHERE tg.tgrelid OPERATOR(pg_catalog.=) c.oid
                                       AND tg.tgname OPERATOR(pg_catalog.=) $1)",
                None,
                &[TRIGGER.into()],
            )?
            .map(|row| Ok(row.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid)))
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .unwrap_or_else(|e| internal(&e))
}

/// `mm_conflict._ddl_apply`: runs `command` (under the caller's `search_path`) on this node, in
/// the calling transaction, for `replicate_ddl` (change `id`, called on node `origin`): then every
/// table of the publication goes back to sending all its columns, a table the command created
/// joins the mesh here (as `replicate_table` with its defaults makes it; the node's subscriptions
/// know it at once, in this transaction), and the change is recorded in
/// `mm_conflict.schema_change`. Returns a JSON object: `joined` (tables that joined), `skipped`
/// (tables created without a primary key, not replicated).
pub fn apply(command: &str, search_path: &str, origin: i32, id: &str) -> Result<String, MmError> {
    crate::pg::security::require_superuser("_ddl_apply()")?;
    let me = super::local::this_node()?;
    let before = unreplicated_tables();
    run_command(command, search_path);
    let _own = OwnDdl::start();
    // Full column lists back (replicate_ddl restricted them while the change drained).
    let restricted: Vec<String> = Spi::connect(|client| {
        client
            .select(
                "SELECT n.nspname::pg_catalog.text, c.relname::pg_catalog.text
                   FROM pg_catalog.pg_publication_rel r
                   JOIN pg_catalog.pg_publication p ON p.oid OPERATOR(pg_catalog.=) r.prpubid
                   JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) r.prrelid
                   JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
                  WHERE p.pubname OPERATOR(pg_catalog.=) $1 AND r.prattrs IS NOT NULL",
                None,
                &[PUBLICATION.into()],
            )?
            .map(|row| {
                Ok(names::sql_qualified(
                    &row.get::<String>(1)?.unwrap_or_default(),
                    &row.get::<String>(2)?.unwrap_or_default(),
                ))
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .unwrap_or_else(|e| internal(&e));
    for table in restricted {
        for verb in ["DROP", "ADD"] {
            Spi::run(&format!(
                "ALTER PUBLICATION {} {verb} TABLE {table}",
                sql_ident(PUBLICATION)
            ))
            .unwrap_or_else(|e| internal(&e));
        }
    }
    // Tables the command created join the mesh (one without a primary key, which
    // replicate_table refuses, is skipped).
    let subscriptions = mesh_subscriptions(i64::from(me));
    let (mut joined, mut skipped) = (Vec::new(), Vec::new());
    for oid in unreplicated_tables() {
        if before.contains(&oid) {
            continue;
        }
        match super::local::replicate_table(oid, Some("last_xacttime"), Some("last"), None, &[]) {
            Err(MmError::NoPrimaryKey { table }) => {
                MmError::DdlTableNotReplicated {
                    table: table.clone(),
                }
                .notice();
                skipped.push(table);
                continue;
            }
            replicated => replicated?,
        }
        for (subscription, _) in &subscriptions {
            crate::pg::compat::add_subscription_rel_ready(*subscription, oid);
        }
        joined.push(super::local::table_names(oid).0);
    }
    let mut nodes: Vec<i16> = subscriptions.iter().map(|(_, peer)| *peer as i16).collect();
    nodes.push(me);
    nodes.sort_unstable();
    Spi::run_with_args(
        "INSERT INTO mm_conflict.schema_change(change_id, origin, command, joined, nodes)
         VALUES ($1, $2::pg_catalog.int2, $3, $4, $5)",
        &[
            id.into(),
            origin.into(),
            command.into(),
            joined.clone().into(),
            nodes.into(),
        ],
    )
    .unwrap_or_else(|e| internal(&e));
    Ok(serde_json::json!({ "joined": joined, "skipped": skipped }).to_string())
}

/// This node's subscriptions from its peers (`mm_conflict_<peer>_<me>`): oid and peer.
fn mesh_subscriptions(me: i64) -> Vec<(pg_sys::Oid, i64)> {
    let rows: Vec<(pg_sys::Oid, String)> = Spi::connect(|client| {
        client
            .select(
                &format!(
                    "SELECT oid, subname::pg_catalog.text FROM pg_catalog.pg_subscription
                      WHERE subdbid OPERATOR(pg_catalog.=) {}",
                    mm_conflict_core::mesh::THIS_DATABASE
                ),
                None,
                &[],
            )?
            .map(|row| {
                Ok((
                    row.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                    row.get::<String>(2)?.unwrap_or_default(),
                ))
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .unwrap_or_else(|e| internal(&e));
    rows.into_iter()
        .filter_map(
            |(oid, name)| match mm_conflict_core::mesh::parse_channel(&name) {
                Some((from, to)) if to == me => Some((oid, from)),
                _ => None,
            },
        )
        .collect()
}

/// The replicated table (one with `mm_resolve`) that object `oid` of a DDL command is or belongs
/// to: the table itself, or the table of a unique index. `None` for anything else.
fn replicated_table_of(oid: pg_sys::Oid, object_type: &str) -> Option<pg_sys::Oid> {
    let table = match object_type {
        "table" | "table column" => oid,
        "index" => read_one::<pg_sys::Oid>(
            "SELECT indrelid FROM pg_catalog.pg_index
              WHERE indexrelid OPERATOR(pg_catalog.=) $1 AND indisunique",
            &[oid.into()],
        )
        .unwrap_or_else(|e| internal(&e))?,
        _ => return None,
    };
    // Only a table the caller owns (the event triggers fire for its owner's DDL; a direct call
    // with another table's oid learns nothing of it).
    let replicated = read_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger tg
                          JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) tg.tgrelid
                         WHERE tg.tgrelid OPERATOR(pg_catalog.=) $1
                           AND tg.tgname OPERATOR(pg_catalog.=) $2
                           AND pg_catalog.pg_has_role(c.relowner, 'USAGE'))",
        &[table.into(), TRIGGER.into()],
    )
    .unwrap_or_else(|e| internal(&e))
    .unwrap_or(false);
    replicated.then_some(table)
}

/// `55000` or a WARNING (or nothing) for a schema change of replicated table `table` made outside
/// `replicate_ddl` on a node of a mesh, as `mm_conflict.bare_ddl` says.
fn bare(command: &str, table: String) {
    if OwnDdl::active() || !super::local::has_subscriptions() {
        return;
    }
    let command = command.to_string();
    match BARE_DDL.get() {
        BareDdl::Allow => {}
        BareDdl::Warn => MmError::BareDdl { command, table }.warn(),
        BareDdl::Error => MmError::BareDdlRefused { command, table }.raise(),
    }
}

/// `ddl_command_end`: for each command (`tags`) and object (`objects`, `types`) of the event: a
/// replicated table whose bookkeeping columns were dropped or renamed refuses the change
/// (`2BP01`); one whose bookkeeping columns got a type `mm_resolve` does not take, or whose
/// criterion column went, refuses it with the trigger's own error; then [`bare`].
pub fn watch(objects: &[pg_sys::Oid], types: &[String], tags: &[String]) -> Result<(), MmError> {
    for ((oid, object_type), tag) in objects.iter().zip(types).zip(tags) {
        let Some(table) = replicated_table_of(*oid, object_type) else {
            continue;
        };
        let (identity, _) = super::local::table_names(table);
        if object_type != "index" {
            let missing = read_one::<String>(
                "SELECT c FROM pg_catalog.unnest($2::pg_catalog.text[]) c
                  WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
                                     WHERE attrelid OPERATOR(pg_catalog.=) $1
                                       AND attname OPERATOR(pg_catalog.=) c AND NOT attisdropped)
                  LIMIT 1",
                &[
                    table.into(),
                    vec![COL_ISLOCAL, COL_NODEID, COL_XACTTIME, COL_STATTIME].into(),
                ],
            )
            .unwrap_or_else(|e| internal(&e));
            if let Some(column) = missing {
                return Err(MmError::BookkeepingColumnChanged {
                    table: identity,
                    column,
                });
            }
            // A retyped bookkeeping column, or a criterion column gone: the trigger's own error.
            match super::local::check_table(table) {
                Err(MmError::NoPrimaryKey { table }) => {
                    return Err(MmError::PrimaryKeyDropped { table })
                }
                checked => checked?,
            }
        }
        bare(tag, identity);
    }
    Ok(())
}

/// `sql_drop`: each dropped `mm_resolve` trigger (`triggers`: the address names of the dropped
/// triggers, [schema, table, trigger]) is a replicated table dropped (or its trigger) outside
/// `replicate_ddl`: [`bare`].
pub fn watch_drop(tag: &str, triggers: &[Vec<String>]) {
    for address in triggers {
        if let [schema, table, trigger] = &address[..] {
            if trigger == TRIGGER {
                bare(tag, names::identity(schema, table));
            }
        }
    }
}
