//! The one way Rust reaches another node: a dblink connection (opened by `mm_conflict._connect`,
//! which pins the remote session's `search_path` and output settings and keeps its statements out
//! of the peer's log), and statements that call one of mm_conflict's functions there, built here
//! with every value quoted once, by [`Value::sql`].
//!
//! Why dblink, and why its connections are opened from SQL: see the header of `sql/mesh.sql`.

use pgrx::prelude::*;

use crate::error::MmError;
use crate::pg::names::{bytea_hex, sql_ident, sql_literal};
use crate::pg::spi::read_one;

/// A value in a call sent to a peer.
pub enum Value<'a> {
    Text(&'a str),
    /// A table, by its stable name (`pg::names::identity`: the same on every node).
    Table(&'a str),
    Bool(bool),
    Int(i64),
    /// A `bigint[]` (`None`: NULL).
    Ints(Option<&'a [i64]>),
    Interval(&'a str),
    /// Binary keys (`bytea[]`).
    Keys(&'a [Vec<u8>]),
}

impl Value<'_> {
    /// The value as SQL text: the only place a value sent to a peer is quoted.
    pub fn sql(&self) -> String {
        match self {
            Value::Text(text) => sql_literal(text),
            Value::Table(name) => format!("{}::pg_catalog.regclass", sql_literal(name)),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Ints(None) => "NULL::pg_catalog.int8[]".into(),
            Value::Ints(Some(values)) => {
                let values: Vec<String> = values.iter().map(i64::to_string).collect();
                format!("'{{{}}}'::pg_catalog.int8[]", values.join(","))
            }
            Value::Interval(text) => format!("{}::pg_catalog.interval", sql_literal(text)),
            Value::Keys(keys) => {
                // Array input: each element double-quoted, its backslash escaped for the array
                // parser (the literal then escapes it again for the string).
                let elements: Vec<String> = keys
                    .iter()
                    .map(|k| format!("\"\\{}\"", bytea_hex(k)))
                    .collect();
                format!(
                    "{}::pg_catalog.bytea[]",
                    sql_literal(&format!("{{{}}}", elements.join(",")))
                )
            }
        }
    }
}

/// `SELECT mm_conflict.<function>(<args>)`: `function` is one of mm_conflict's own (a constant
/// of the caller's, never input).
pub fn call(function: &'static str, args: &[Value]) -> String {
    let args: Vec<String> = args.iter().map(Value::sql).collect();
    format!("SELECT mm_conflict.{function}({})", args.join(", "))
}

/// `SELECT` of `columns` of every row of set-returning function `mm_conflict.<function>(<args>)`
/// as one JSON array of arrays (one per row, the columns in that order), as text: no column names
/// repeated on every row.
pub fn call_rows(function: &'static str, args: &[Value], columns: &[&'static str]) -> String {
    let args: Vec<String> = args.iter().map(Value::sql).collect();
    let columns: Vec<String> = columns
        .iter()
        .map(|c| format!("r.{}", sql_ident(c)))
        .collect();
    format!(
        "SELECT COALESCE(pg_catalog.json_agg(pg_catalog.json_build_array({}))::pg_catalog.text, '[]') \
         FROM mm_conflict.{function}({}) r",
        columns.join(", "),
        args.join(", ")
    )
}

/// A peer of this node, as its subscription to it knows it.
pub struct Peer {
    pub node_id: i32,
    pub conninfo: String,
}

/// This node's peers (`mm_conflict._peers()`: those it subscribes to), by node id.
pub fn peers() -> Vec<Peer> {
    Spi::connect(|client| {
        client
            .select(
                "SELECT node_id, conninfo FROM mm_conflict._peers() ORDER BY node_id",
                None,
                &[],
            )?
            .map(|row| {
                Ok(Peer {
                    node_id: row.get::<i32>(1)?.unwrap_or_default(),
                    conninfo: row.get::<String>(2)?.unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .unwrap_or_else(|e| spi_failed(&e))
}

/// `25001` when the calling transaction has written (it has a transaction id): a replication slot
/// that a peer creates on this node during the call would wait for it, and the call for the slot.
pub fn refuse_written_transaction(function: &str) -> Result<(), MmError> {
    let written = read_one::<bool>(
        "SELECT pg_catalog.txid_current_if_assigned() IS NOT NULL",
        &[],
    )
    .unwrap_or_default();
    if written == Some(true) {
        return Err(MmError::MeshInWrittenTransaction {
            function: function.into(),
        });
    }
    Ok(())
}

/// Makes sure dblink is installed (`mm_conflict._require_dblink`): creates it when it may, else
/// raises `dblink_missing` naming `caller`.
pub fn require_dblink(caller: &str) {
    require_dblink_creating(caller, true);
}

/// As [`require_dblink`]; `may_create: false` only checks (`create_mesh`: creating it would
/// write, and a slot created during the call would wait for this transaction).
pub fn require_dblink_creating(caller: &str, may_create: bool) {
    local(
        "SELECT mm_conflict._require_dblink($1, $2)::pg_catalog.text",
        &[caller.into(), may_create.into()],
    );
}

/// An SPI call that cannot fail did: an internal error.
pub(super) fn spi_failed(e: &dyn std::fmt::Display) -> ! {
    MmError::Internal {
        what: format!("SPI: {e}"),
    }
    .raise()
}

/// Runs `sql` here (a call of one of the SQL functions that drive dblink) and returns its one
/// text value. Through a read-only SPI call, so that it gives this transaction no transaction id:
/// `create_mesh` must not have one while peers create replication slots on this node, which wait
/// for every transaction that has (pgrx's read-write calls take one).
fn local(sql: &str, args: &[pgrx::datum::DatumWithOid]) -> Option<String> {
    read_one::<String>(sql, args).unwrap_or_else(|e| spi_failed(&e))
}

/// An open dblink connection to a peer, named for this session.
pub struct Connection {
    name: String,
    /// dblink's `dblink_send_query` and `dblink_get_result`, schema-qualified.
    send_query: String,
    get_result: String,
}

impl Connection {
    /// Opens connection `name` to `conninfo`; `08001` naming `who` (never the conninfo) when the
    /// node cannot be reached.
    pub fn open(name: String, conninfo: &str, who: &str) -> Connection {
        local(
            "SELECT mm_conflict._connect($1, $2, $3)::pg_catalog.text",
            &[name.as_str().into(), conninfo.into(), who.into()],
        );
        let qualified = |function: &str| -> String {
            local("SELECT mm_conflict._dblink($1)", &[function.into()])
                .unwrap_or_else(|| spi_failed(&"dblink is not installed"))
        };
        Connection {
            send_query: qualified("dblink_send_query"),
            get_result: qualified("dblink_get_result"),
            name,
        }
    }

    /// Sends `sql` (one text value per row, as [`call_rows`] makes) to the peer without waiting
    /// for it: the peer works while this node does; [`Connection::receive`] reads the answer.
    pub fn send(&self, sql: &str) {
        local(
            &format!("SELECT {}($1, $2)::pg_catalog.text", self.send_query),
            &[self.name.as_str().into(), sql.into()],
        );
    }

    /// The answer to what [`Connection::send`] sent (its first row's value); a remote error is
    /// raised here.
    pub fn receive(&self) -> String {
        let read = format!(
            "SELECT v FROM {}($1) AS r(v pg_catalog.text)",
            self.get_result
        );
        let value = local(&read, &[self.name.as_str().into()]);
        // Once more: the empty result that ends the query frees the connection.
        local(&read, &[self.name.as_str().into()]);
        value.unwrap_or_else(|| "[]".into())
    }

    /// Runs a statement a plan made (`mm_conflict_core::mesh::Remote`): a query's one value, or
    /// NULL for a command.
    pub fn run(&self, remote: &mm_conflict_core::mesh::Remote) -> Option<String> {
        if remote.query {
            self.value(&remote.sql)
        } else {
            local(
                "SELECT mm_conflict._remote_exec($1, $2)::pg_catalog.text",
                &[self.name.as_str().into(), remote.sql.as_str().into()],
            );
            None
        }
    }

    /// The first column of the first row of `sql` on the peer, as text.
    fn value(&self, sql: &str) -> Option<String> {
        local(
            "SELECT mm_conflict._remote_value($1, $2)",
            &[self.name.as_str().into(), sql.into()],
        )
    }

    /// Drops replication slot `slot` on the peer, ending the walsender that still holds it
    /// (`mm_conflict._drop_remote_slot`); nothing when there is none.
    pub fn drop_slot(&self, slot: &str) {
        local(
            "SELECT mm_conflict._drop_remote_slot($1, $2::pg_catalog.name)::pg_catalog.text",
            &[self.name.as_str().into(), slot.into()],
        );
    }

    /// Every row of [`call_rows`]`(function, args, columns)` on the peer, as a JSON array.
    pub fn rows(&self, function: &'static str, args: &[Value], columns: &[&'static str]) -> String {
        self.send(&call_rows(function, args, columns));
        self.receive()
    }

    /// The result of [`call`]`(function, args)` on the peer, as text; a remote error is raised
    /// here with its SQLSTATE, message, detail and hint.
    pub fn call(&self, function: &'static str, args: &[Value]) -> Option<String> {
        self.value(&call(function, args))
    }

    /// Closes the connection. (On an error, connections stay open until the session ends or a
    /// connection of the same name is opened, as dblink's do.)
    pub fn close(self) {
        local(
            "SELECT mm_conflict._disconnect($1)::pg_catalog.text",
            &[self.name.as_str().into()],
        );
    }
}
