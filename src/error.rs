//! The extension's errors: one enum, each variant with its own SQLSTATE, raised as a proper
//! PostgreSQL error (not pgrx's generic `XX000`), so clients can branch on the code.

use mm_conflict_core::PolicyError;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum MmError {
    #[error("{0}")]
    BadArgument(#[from] PolicyError),

    #[error("mm_resolve must be fired BEFORE INSERT, UPDATE or DELETE FOR EACH ROW, not {fired}")]
    WrongTriggerEvent { fired: String },

    #[error("table {table} has no column \"{column}\" required by mm_resolve")]
    MissingColumn {
        table: String,
        column: String,
        add_column_sql: String,
    },

    #[error("criterion column \"{column}\" does not exist in table {table}")]
    UnknownCriterionColumn { table: String, column: String },

    #[error("column \"{column}\" of table {table} has type {found}, mm_resolve needs {expected}")]
    UnsupportedColumnType {
        table: String,
        column: String,
        found: String,
        expected: &'static str,
    },

    #[error(
        "table {table} has no primary key, which mm_resolve needs to resolve replicated inserts"
    )]
    NoPrimaryKey { table: String },

    #[error("{function} needs an ordinary table, and {relation} is not one")]
    NotATable {
        relation: String,
        function: &'static str,
    },

    #[error("table {table} has no mm_resolve trigger")]
    NotReplicated { table: String },

    #[error("invalid mesh description: {message}")]
    BadMeshSpec { message: String },

    #[error("local {operation} on table {table} loses to the stored version of the row")]
    LocalConflict {
        table: String,
        operation: &'static str,
        detail: String,
        hint: String,
    },
}

impl MmError {
    pub fn sqlstate(&self) -> PgSqlErrorCode {
        use PgSqlErrorCode::*;
        match self {
            MmError::BadArgument(PolicyError::NodeIdNotInteger { .. }) => {
                ERRCODE_INVALID_TEXT_REPRESENTATION
            }
            MmError::BadArgument(PolicyError::NodeIdOutOfRange { .. }) => {
                ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE
            }
            MmError::BadArgument(_) => ERRCODE_INVALID_PARAMETER_VALUE,
            MmError::WrongTriggerEvent { .. } => ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
            MmError::MissingColumn { .. } | MmError::UnknownCriterionColumn { .. } => {
                ERRCODE_UNDEFINED_COLUMN
            }
            MmError::UnsupportedColumnType { .. } => ERRCODE_DATATYPE_MISMATCH,
            MmError::NoPrimaryKey { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            MmError::LocalConflict { .. } => ERRCODE_TRIGGERED_DATA_CHANGE_VIOLATION,
            MmError::NotATable { .. } => ERRCODE_WRONG_OBJECT_TYPE,
            MmError::NotReplicated { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            MmError::BadMeshSpec { .. } => ERRCODE_INVALID_PARAMETER_VALUE,
        }
    }

    pub fn detail(&self) -> Option<String> {
        match self {
            MmError::LocalConflict { detail, .. } => Some(detail.clone()),
            _ => None,
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            MmError::BadArgument(PolicyError::WrongArgCount { .. }) => Some(
                "Use mm_resolve(node_id, criterion, first|last, preferred_node), or mm_resolve(node_id, 'nodeid', winning_node [, preferred_node])."
                    .into(),
            ),
            MmError::BadArgument(PolicyError::BadDirection { .. }) => {
                Some("Argument 3 is first or last (for criterion nodeid: the winning node id).".into())
            }
            MmError::WrongTriggerEvent { .. } => Some(
                "CREATE TRIGGER ... BEFORE INSERT OR UPDATE OR DELETE ON tbl FOR EACH ROW EXECUTE FUNCTION mm_resolve(...)".into(),
            ),
            MmError::MissingColumn { add_column_sql, .. } => Some(format!("Run: {add_column_sql}")),
            MmError::UnknownCriterionColumn { .. } => Some(
                "The criterion is last_xacttime, last_stattime, nodeid, or the name of a timestamp/timestamptz column of the table."
                    .into(),
            ),
            MmError::NoPrimaryKey { table } => Some(format!(
                "Add one with ALTER TABLE {table} ADD PRIMARY KEY (...)."
            )),
            MmError::LocalConflict { hint, .. } => Some(hint.clone()),
            MmError::NotATable { .. } => Some(
                "Partitioned tables, views and foreign tables are not supported; use the table itself.".into(),
            ),
            MmError::NotReplicated { table } => Some(format!(
                "Run SELECT mm_conflict.replicate_table('{}');",
                table.replace('\'', "''")
            )),
            MmError::BadMeshSpec { .. } => Some(
                r#"nodes is a JSON array of objects: [{"id": 1, "name": "a", "conninfo": "host=... dbname=..."}, ...]"#.into(),
            ),
            _ => None,
        }
    }

    /// Raises this error as a PostgreSQL `ERROR` with its SQLSTATE, detail and hint.
    /// Never returns: control goes back to PostgreSQL's error handling.
    #[track_caller]
    pub fn raise(self) -> ! {
        let mut report = ErrorReport::new(self.sqlstate(), self.to_string(), "mm_resolve");
        if let Some(detail) = self.detail() {
            report = report.set_detail(detail);
        }
        if let Some(hint) = self.hint() {
            report = report.set_hint(hint);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("ereport(ERROR) returned")
    }
}

/// Raises `result`'s error, if any; otherwise returns its value.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T, MmError> {
    #[track_caller]
    fn or_raise(self) -> T {
        match self {
            Ok(value) => value,
            Err(err) => err.raise(),
        }
    }
}
