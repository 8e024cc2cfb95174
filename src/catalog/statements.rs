//! The SQL text of the statements the engine runs against a replicated table, built once per
//! cache entry from its live columns. Parameters are numbered by position among the live columns
//! (`$1` is the first live column), so every statement takes the same parameter list: a row's
//! live column values.

/// A live column as the statements need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatementColumn {
    pub name: String,
    /// A generated column: never assigned.
    pub generated: bool,
    /// `GENERATED ALWAYS AS IDENTITY`: inserted with `OVERRIDING SYSTEM VALUE`, never updated.
    pub identity_always: bool,
    /// For a key column, its equality operator in SQL (`OPERATOR(schema.name)`, the key index's
    /// own): statements match the key with it. `None`: not a key column.
    pub key_operator: Option<String>,
}

/// The statements of one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statements {
    /// An INSERT that beat the stored row: `UPDATE ONLY t SET <every column> WHERE <key>`.
    pub overwrite: String,
    /// Settling a row against a new tombstone: `DELETE FROM ONLY t WHERE <key> RETURNING <live
    /// columns>`.
    pub resend_delete: String,
    /// Re-sending a row that beat a tombstone: `INSERT INTO t (...) OVERRIDING SYSTEM VALUE VALUES`.
    pub resend_insert: String,
}

/// `table` is the table's SQL name (quoted); column names are quoted here.
pub fn build(table: &str, columns: &[StatementColumn]) -> Statements {
    use crate::pg::names::sql_ident;
    let param = |i: usize| format!("${}", i + 1);
    let key_match = columns
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let op = c.key_operator.as_ref()?;
            Some(format!("{} {op} {}", sql_ident(&c.name), param(i)))
        })
        .collect::<Vec<_>>()
        .join(" AND ");
    let settable: Vec<(usize, &StatementColumn)> = columns
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.generated)
        .collect();
    let overwrite = format!(
        "UPDATE ONLY {table} SET {} WHERE {key_match}",
        settable
            .iter()
            .filter(|(_, c)| !c.identity_always)
            .map(|(i, c)| format!("{} = {}", sql_ident(&c.name), param(*i)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let resend_delete = format!(
        "DELETE FROM ONLY {table} WHERE {key_match} RETURNING {}",
        columns
            .iter()
            .map(|c| sql_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let resend_insert = format!(
        "INSERT INTO {table} ({}) OVERRIDING SYSTEM VALUE VALUES ({})",
        settable
            .iter()
            .map(|(_, c)| sql_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", "),
        settable
            .iter()
            .map(|(i, _)| param(*i))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Statements {
        overwrite,
        resend_delete,
        resend_insert,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, key: bool) -> StatementColumn {
        StatementColumn {
            name: name.into(),
            generated: false,
            identity_always: false,
            key_operator: key.then(|| "OPERATOR(pg_catalog.=)".to_string()),
        }
    }

    #[test]
    fn statements_skip_generated_and_identity_columns_where_they_must() {
        let columns = [
            StatementColumn {
                identity_always: true,
                ..col("id", true)
            },
            col("Info \"x\"", false),
            StatementColumn {
                generated: true,
                ..col("g", false)
            },
            col("v", false),
        ];
        let s = build("\"s\".\"t\"", &columns);
        assert_eq!(
            s.overwrite,
            "UPDATE ONLY \"s\".\"t\" SET \"Info \"\"x\"\"\" = $2, \"v\" = $4 WHERE \"id\" OPERATOR(pg_catalog.=) $1"
        );
        assert_eq!(
            s.resend_delete,
            "DELETE FROM ONLY \"s\".\"t\" WHERE \"id\" OPERATOR(pg_catalog.=) $1 RETURNING \"id\", \"Info \"\"x\"\"\", \"g\", \"v\""
        );
        assert_eq!(
            s.resend_insert,
            "INSERT INTO \"s\".\"t\" (\"id\", \"Info \"\"x\"\"\", \"v\") OVERRIDING SYSTEM VALUE VALUES ($1, $2, $4)"
        );
    }

    #[test]
    fn composite_keys_match_every_column() {
        let s = build("t", &[col("a", true), col("b", true), col("c", false)]);
        assert!(
            s.overwrite.ends_with(
                "WHERE \"a\" OPERATOR(pg_catalog.=) $1 AND \"b\" OPERATOR(pg_catalog.=) $2"
            ),
            "{}",
            s.overwrite
        );
    }
}
