//! Node-safe keys: every sequence that feeds a column of a replicated table (serial and bigserial
//! columns, identity columns, `nextval` defaults) is staggered for this node, so that the values
//! nodes draw never meet (`mm_conflict_core::sequence`); and the report of the `sequences` view.

use mm_conflict_core::sequence::{self, Unsafe};
use pgrx::prelude::*;
use pgrx::spi::Spi;

use crate::error::MmError;
use crate::pg::names::{self, sql_ident};

/// A sequence that feeds a column of a table.
pub struct Feed {
    pub column: String,
    /// The largest value the column's type holds.
    column_max: i64,
    /// The sequence's stable name.
    pub sequence: String,
    sequence_sql: String,
    /// An identity column's sequence (altered through the column).
    identity: bool,
    pub increment: i64,
    max_value: i64,
    /// The value its next `nextval` returns.
    pub next_value: i64,
}

const FEEDS: &str = "
WITH fed AS (
    SELECT a.attnum, a.attname, a.atttypid, d.refobjid AS seq, false AS identity
      FROM pg_catalog.pg_attrdef ad
      JOIN pg_catalog.pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
      JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass
                                 AND d.objid = ad.oid
                                 AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
      JOIN pg_catalog.pg_class c ON c.oid = d.refobjid AND c.relkind = 'S'
     WHERE ad.adrelid = $1
    UNION
    SELECT a.attnum, a.attname, a.atttypid, d.objid, true
      FROM pg_catalog.pg_depend d
      JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
     WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
       AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
       AND d.refobjid = $1 AND d.deptype = 'i'
)
SELECT f.attname::text,
       CASE f.atttypid WHEN 'int2'::pg_catalog.regtype THEN 32767
                       WHEN 'int4'::pg_catalog.regtype THEN 2147483647
                       ELSE 9223372036854775807 END::bigint,
       n.nspname::text, c.relname::text, f.identity,
       s.seqincrement, s.seqmax
  FROM fed f
  JOIN pg_catalog.pg_sequence s ON s.seqrelid = f.seq
  JOIN pg_catalog.pg_class c ON c.oid = f.seq
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 ORDER BY f.attnum";

fn spi_error(e: pgrx::spi::Error) -> MmError {
    MmError::Internal {
        what: format!("SPI: {e}"),
    }
}

/// The sequences that feed columns of table `tbl`, in column order.
pub fn feeds(tbl: pg_sys::Oid) -> Result<Vec<Feed>, MmError> {
    Spi::connect(|client| {
        let rows = client.select(FEEDS, None, &[tbl.into()])?;
        let mut feeds = Vec::new();
        for row in rows {
            let schema: String = row.get(3)?.unwrap_or_default();
            let name: String = row.get(4)?.unwrap_or_default();
            let sequence_sql = names::sql_qualified(&schema, &name);
            let increment = row.get(6)?.unwrap_or(1);
            // The sequence's own row: after RESTART it is not "called", and its last value is the
            // next one.
            let state = client
                .select(
                    &format!("SELECT last_value, is_called FROM {sequence_sql}"),
                    Some(1),
                    &[],
                )?
                .first()
                .get_two::<i64, bool>()?;
            let next_value = match state {
                (Some(last), Some(true)) => last.saturating_add(increment),
                (Some(last), _) => last,
                (None, _) => 1,
            };
            feeds.push(Feed {
                column: row.get(1)?.unwrap_or_default(),
                column_max: row.get(2)?.unwrap_or(i64::MAX),
                sequence: names::identity(&schema, &name),
                sequence_sql,
                identity: row.get(5)?.unwrap_or(false),
                increment,
                max_value: row.get(7)?.unwrap_or(i64::MAX),
                next_value,
            });
        }
        Ok(feeds)
    })
    .map_err(spi_error)
}

impl Feed {
    /// The largest value the sequence may reach in this column.
    fn max(&self) -> i64 {
        self.max_value.min(self.column_max)
    }

    /// The value drawn last, or the one before the next (the same residue).
    fn last(&self) -> i64 {
        self.next_value.saturating_sub(self.increment.max(1))
    }

    /// Whether this node draws values no other node draws.
    pub fn node_safe(&self, node_id: i64) -> Result<bool, Unsafe> {
        let step = sequence::step_for(self.max())?;
        Ok(self.increment > 0
            && node_id < step
            && sequence::is_staggered(node_id, self.increment, step, self.last()))
    }

    fn unsafe_error(&self, table: &str, why: Unsafe) -> MmError {
        MmError::SequenceNotNodeSafe {
            sequence: self.sequence.clone(),
            table: table.to_string(),
            column: self.column.clone(),
            reason: match why {
                Unsafe::TooSmall => "its values fit in a smallint".into(),
                Unsafe::Descending => "it counts down".into(),
                Unsafe::NodeIdTooLarge { node_id, step } => format!(
                    "its values fit in an integer, which leaves room for node ids up to {}, and this is node {node_id}",
                    step - 1
                ),
            },
        }
    }
}

/// Staggers every sequence that feeds a column of `tbl` (stable name `table`, SQL name
/// `table_sql`) for node `node_id`, restarting above the values already in the column. Warns for
/// an `integer` sequence (the ceiling of node ids and values it leaves); refuses what cannot be
/// made node-safe. Returns how many sequences were changed.
pub fn make_node_safe(
    tbl: pg_sys::Oid,
    table: &str,
    table_sql: &str,
    node_id: i64,
) -> Result<usize, MmError> {
    let mut changed = 0;
    for feed in feeds(tbl)? {
        let floor = Spi::connect(|client| {
            client
                .select(
                    &format!(
                        "SELECT pg_catalog.max({})::bigint FROM {table_sql}",
                        sql_ident(&feed.column)
                    ),
                    Some(1),
                    &[],
                )?
                .first()
                .get_one::<i64>()
        })
        .map_err(spi_error)?
        .unwrap_or(0);
        let plan = sequence::plan(node_id, feed.increment, feed.max(), feed.last(), floor)
            .map_err(|why| feed.unsafe_error(table, why))?;
        if sequence::step_for(feed.max()) == Ok(sequence::INTEGER_STEP) {
            MmError::SequenceNarrow {
                sequence: feed.sequence.clone(),
                table: table.to_string(),
                column: feed.column.clone(),
            }
            .warn();
        }
        let Some((step, restart)) = plan else {
            continue;
        };
        let sql = if feed.identity {
            format!(
                "ALTER TABLE {table_sql} ALTER COLUMN {} SET INCREMENT BY {step} RESTART WITH {restart}",
                sql_ident(&feed.column)
            )
        } else {
            format!(
                "ALTER SEQUENCE {} INCREMENT BY {step} RESTART WITH {restart}",
                feed.sequence_sql
            )
        };
        Spi::run(&sql).map_err(spi_error)?;
        changed += 1;
    }
    Ok(changed)
}

/// One row of the `sequences` view: a sequence feeding a column of a replicated table.
pub struct Report {
    pub table: String,
    pub column: String,
    pub sequence: String,
    pub increment: i64,
    pub next_value: i64,
    pub node_safe: bool,
    pub problem: Option<String>,
}

/// The sequences that feed columns of the replicated tables `tables` (oid, stable name), for node
/// `node_id`.
pub fn report(tables: &[(pg_sys::Oid, String)], node_id: i64) -> Result<Vec<Report>, MmError> {
    let mut out = Vec::new();
    for (oid, table) in tables {
        for feed in feeds(*oid)? {
            let (node_safe, problem) = match feed.node_safe(node_id) {
                Ok(true) => (true, None),
                Ok(false) => (
                    false,
                    Some(format!(
                        "not staggered for node {node_id} (new, or changed by setval or ALTER SEQUENCE): run SELECT mm_conflict.replicate_table('{}') again",
                        table.replace('\'', "''")
                    )),
                ),
                Err(why) => (false, Some(feed.unsafe_error(table, why).to_string())),
            };
            out.push(Report {
                table: table.clone(),
                column: feed.column,
                sequence: feed.sequence,
                increment: feed.increment,
                next_value: feed.next_value,
                node_safe,
                problem,
            });
        }
    }
    Ok(out)
}
