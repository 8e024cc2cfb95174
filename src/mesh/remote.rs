//! The one way Rust reaches another node: a dblink connection (opened by `mm_conflict._connect`,
//! which pins the remote session's `search_path` and output settings and keeps its statements out
//! of the peer's log), and statements that call one of mm_conflict's functions there, built here
//! with every value quoted once, by [`Value::sql`].
//!
//! Why dblink, and why its connections are opened from SQL: see the header of `sql/mesh.sql`.

use pgrx::prelude::*;

use crate::error::MmError;
use crate::pg::names::sql_literal;
use crate::pg::spi::read_one;

/// A value in a call sent to a peer.
pub enum Value<'a> {
    Text(&'a str),
    /// A table, by its stable name (`pg::names::identity`: the same on every node).
    Table(&'a str),
    Bool(bool),
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
            Value::Interval(text) => format!("{}::pg_catalog.interval", sql_literal(text)),
            Value::Keys(keys) => {
                // Array input: each element double-quoted, its backslash escaped for the array
                // parser (the literal then escapes it again for the string).
                let elements: Vec<String> = keys
                    .iter()
                    .map(|k| format!("\"\\\\x{}\"", hex(k)))
                    .collect();
                format!(
                    "{}::pg_catalog.bytea[]",
                    sql_literal(&format!("{{{}}}", elements.join(",")))
                )
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// `SELECT mm_conflict.<function>(<args>)`: `function` is one of mm_conflict's own (a constant
/// of the caller's, never input).
pub fn call(function: &'static str, args: &[Value]) -> String {
    let args: Vec<String> = args.iter().map(Value::sql).collect();
    format!("SELECT mm_conflict.{function}({})", args.join(", "))
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

/// Makes sure dblink is installed (`mm_conflict._require_dblink`): creates it when it may, else
/// raises `dblink_missing` naming `caller`.
pub fn require_dblink(caller: &str) {
    Spi::run_with_args(
        "SELECT mm_conflict._require_dblink($1)",
        &[caller.into()],
    )
    .unwrap_or_else(|e| spi_failed(&e));
}

fn spi_failed(e: &dyn std::fmt::Display) -> ! {
    MmError::Internal {
        what: format!("SPI: {e}"),
    }
    .raise()
}

/// An open dblink connection to a peer, named for this session.
pub struct Connection {
    name: String,
}

impl Connection {
    /// Opens connection `name` to `conninfo`; `08001` naming `who` (never the conninfo) when the
    /// node cannot be reached.
    pub fn open(name: String, conninfo: &str, who: &str) -> Connection {
        Spi::run_with_args(
            "SELECT mm_conflict._connect($1, $2, $3)",
            &[name.as_str().into(), conninfo.into(), who.into()],
        )
        .unwrap_or_else(|e| spi_failed(&e));
        Connection { name }
    }

    /// The result of [`call`]`(function, args)` on the peer, as text; a remote error is raised
    /// here with its SQLSTATE, message, detail and hint.
    pub fn call(&self, function: &'static str, args: &[Value]) -> Option<String> {
        let sql = call(function, args);
        // Not read-only: the call is a statement of this transaction like any other, and what
        // this session wrote before must be visible to the statements after it.
        Spi::connect_mut(|client| {
            client
                .update(
                    "SELECT mm_conflict._remote_value($1, $2)",
                    Some(1),
                    &[self.name.as_str().into(), sql.as_str().into()],
                )?
                .first()
                .get_one::<String>()
        })
        .unwrap_or_else(|e| spi_failed(&e))
    }

    /// The connection's name, for the SQL functions that take one.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Closes the connection. (On an error, connections stay open until the session ends or a
    /// connection of the same name is opened, as dblink's do.)
    pub fn close(self) {
        Spi::run_with_args("SELECT mm_conflict._disconnect($1)", &[self.name.as_str().into()])
            .unwrap_or_else(|e| spi_failed(&e));
    }
}

/// Reads one value from this node (read-only), for the runner's local steps.
pub fn local_value<T: FromDatum + IntoDatum>(
    query: &str,
    args: &[pgrx::datum::DatumWithOid],
) -> Option<T> {
    read_one(query, args).unwrap_or_else(|e| spi_failed(&e))
}
