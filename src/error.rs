//! Every error (and warning) a user can meet from mm_conflict, from Rust or from its SQL: one
//! enum, each variant with one wording, one SQLSTATE, and its detail and hint, raised as a proper
//! PostgreSQL error (never pgrx's generic `XX000`), so that clients can branch on the code.
//!
//! The SQL functions raise them too: `mm_conflict._fail(jsonb)` takes a variant as JSON
//! (`{"error": "cannot_connect", "who": "node 2", "detail": "..."}`), so no message text lives in
//! SQL.

use mm_conflict_core::PolicyError;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};
use serde::Deserialize;

#[derive(Debug, thiserror::Error, Deserialize)]
#[serde(tag = "error", rename_all = "snake_case", deny_unknown_fields)]
pub enum MmError {
    // ---- the trigger and its table --------------------------------------------------------
    #[error("{0}")]
    #[serde(skip)]
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
        expected: String,
    },

    #[error("table {table} has no primary key")]
    NoPrimaryKey { table: String },

    #[error("delta column \"{column}\" does not exist in table {table}")]
    UnknownDeltaColumn { table: String, column: String },

    #[error("column \"{column}\" of table {table} cannot be a delta column: it is {what}")]
    DeltaColumnNotAllowed {
        table: String,
        column: String,
        what: String,
    },

    #[error("null value in delta column \"{column}\" of table {table}")]
    DeltaColumnNull { table: String, column: String },

    #[error("null value in column \"{column}\" of table {table} violates not-null constraint")]
    KeyColumnNull { table: String, column: String },

    #[error("value of delta column \"{column}\" of table {table} is out of range")]
    DeltaOutOfRange {
        table: String,
        column: String,
        detail: String,
    },

    #[error("table {table} holds a malformed delta state in mm_delta")]
    DeltaStateMalformed { table: String, detail: String },

    #[error("local {operation} on table {table} loses to the stored version of the row")]
    LocalConflict {
        table: String,
        operation: String,
        detail: String,
        hint: String,
    },

    // ---- tables the mesh works on ---------------------------------------------------------
    #[error("{function} needs a table (ordinary or partitioned), and {relation} is not one")]
    NotATable { relation: String, function: String },

    #[error("{function} fires only {expected} ON mm_conflict.tombstone, not {fired} ON {table}")]
    TriggerOnWrongTable {
        function: String,
        expected: String,
        fired: String,
        table: String,
    },

    #[error("mm_conflict.truncate_guard must be fired BEFORE TRUNCATE, not {fired}")]
    TruncateGuardEvent { fired: String },

    #[error("invalid argument to {function}: {detail}")]
    BadInternalArgument { function: String, detail: String },

    #[error("table {table} belongs to mm_conflict itself")]
    ExtensionTable { table: String },

    #[error("table {table} has no mm_resolve trigger")]
    NotReplicated { table: String },

    #[error("table {table} already has an mm_resolve trigger, \"{trigger}\"")]
    OtherResolveTrigger { table: String, trigger: String },

    #[error("trigger \"{trigger}\" on {table} fires before mm_resolve")]
    TriggerFiresFirst { table: String, trigger: String },

    // ---- this node ------------------------------------------------------------------------
    #[error("this node has no node id yet")]
    NoNodeId,

    #[error("node id must be between 1 and 32767, got {value}")]
    NodeIdOutOfRange { value: String },

    #[error("node name must not be empty")]
    EmptyNodeName,

    #[error("this node is already node {current}, not {wanted}")]
    NodeIdTaken { current: i64, wanted: i64 },

    #[error("{function}: argument {argument} must not be empty")]
    EmptyArgument { function: String, argument: String },

    #[error("{function}: argument {argument} must not be NULL")]
    NullArgument { function: String, argument: String },

    #[error("{function} requires superuser")]
    NotSuperuser { function: String },

    #[error("{function} shows tombstones, which only superusers and the owner of mm_conflict.tombstone may read")]
    TombstonesNotReadable { function: String },

    // ---- reaching peers -------------------------------------------------------------------
    #[error("extension dblink is not installed, and {function} needs it to reach other nodes")]
    DblinkMissing { function: String },

    #[error("cannot connect to {who}")]
    CannotConnect { who: String, detail: String },

    #[error("replication slot {slot} is still in use")]
    SlotStillActive { slot: String },

    // ---- subscriptions --------------------------------------------------------------------
    #[error("node {node} cannot subscribe to itself")]
    SubscribeToSelf { node: i64 },

    #[error("node {node} already subscribes to node {peer} with another conninfo")]
    SubscribedElsewhere {
        node: i64,
        peer: i64,
        subscription: String,
    },

    #[error("node {peer} has no mm_conflict extension")]
    PeerWithoutExtension { peer: i64 },

    #[error("node {peer} runs with wal_level = {wal_level}")]
    PeerWalLevel { peer: i64, wal_level: String },

    #[error("node {peer} has no node id yet")]
    PeerWithoutNodeId { peer: i64 },

    #[error("the node at this conninfo is node {found}, not node {expected}")]
    PeerIsAnotherNode { found: i64, expected: i64 },

    #[error("node {peer} has no publication {publication}")]
    PeerWithoutPublication { peer: i64, publication: String },

    #[error("replication slot {slot} on node {peer} is in use")]
    SlotInUse { slot: String, peer: i64 },

    // ---- create_mesh ----------------------------------------------------------------------
    #[error("invalid mesh description: {message}")]
    BadMeshSpec { message: String },

    #[error("invalid delta_columns: {message}")]
    BadDeltaSpec { message: String },

    #[error("{function} cannot run in a transaction that has already written")]
    MeshInWrittenTransaction {
        /// (Defaults to create_mesh(), as the SQL of versions before 0.6.0 raises it.)
        #[serde(default = "create_mesh_name")]
        function: String,
    },

    #[error("create_mesh() needs at least one table")]
    MeshWithoutTables,

    #[error("the role of this conninfo is not a superuser there")]
    RemoteNotSuperuser,

    #[error("wal_level is {wal_level}, not logical")]
    RemoteWalLevel { wal_level: String },

    #[error("PostgreSQL {version} is too old")]
    RemoteTooOld { version: i64 },

    #[error("the extension is not installed on this server")]
    RemoteWithoutPackage,

    #[error("table {table} does not exist there")]
    RemoteTableMissing { table: String },

    #[error("the node at this conninfo is already node {node_id}")]
    RemoteIsAnotherNode { node_id: i64 },

    #[error("table {table} differs between the nodes")]
    TablesDiffer { table: String },

    #[error("node {node} already subscribes to node {peer}")]
    AlreadySubscribed { node: i64, peer: i64 },

    #[error("this node is not part of a mesh")]
    NotInMesh,

    #[error("the mesh was dropped on this node, with problems")]
    DroppedWithProblems { problems: Vec<String> },

    #[error("table_checksum and table_diff read every row of {table}, and row-level security hides rows of it from this role")]
    HiddenByRowSecurity { table: String },

    #[error("node {node} is not a peer of this node")]
    NotAPeer { node: i64 },

    // ---- nodes leaving --------------------------------------------------------------------
    #[error("node {node} is not a node of this mesh")]
    NotANode { node: i64 },

    #[error("node {node} is this node")]
    RemoveSelf { node: i64 },

    #[error("node id {node} is already a node of this mesh")]
    NodeIdInUse { node: i64 },

    #[error("this node has no peers")]
    NoPeers { function: String },

    // ---- schema changes -------------------------------------------------------------------
    #[error("replicate_ddl() cannot run this command: {cause}")]
    DdlNotTransactional { cause: String },

    #[error("replicate_ddl() does not rename {what}")]
    DdlRename { what: String },

    #[error("replicate_ddl() does not drop column \"{column}\" of the primary key of {table}")]
    DdlDropsKeyColumn { table: String, column: String },

    #[error("table {table} was created without a primary key: it does not join the mesh")]
    DdlTableNotReplicated { table: String },

    #[error("node {node} has a version of mm_conflict without replicate_ddl()")]
    PeerWithoutDdl { node: i64 },

    #[error("{command} on replicated table {table} outside replicate_ddl()")]
    BareDdl { command: String, table: String },

    #[error("{command} on replicated table {table} outside replicate_ddl() is refused")]
    BareDdlRefused { command: String, table: String },

    #[error("replicated table {table} must keep a primary key")]
    PrimaryKeyDropped { table: String },

    #[error("column \"{column}\" of replicated table {table} is mm_conflict's")]
    BookkeepingColumnChanged { table: String, column: String },

    #[error("step \"{step}\" on node {node} did not end within {timeout}")]
    StepTimeout {
        step: String,
        node: i64,
        timeout: String,
    },

    #[error("node {node} does not subscribe to node {peer}")]
    NotFullMesh { node: i64, peer: i64 },

    #[error("{function}: {argument} must not be negative, got {value}")]
    NegativeInterval {
        function: String,
        argument: String,
        value: String,
    },

    #[error("node {node} did not confirm what node {from} had written within {timeout}")]
    CatchUpTimeout {
        node: String,
        from: String,
        timeout: String,
    },

    #[error("table_diff of {table} with node {peer}: {ranges} key ranges compared, {rows} differing rows found so far")]
    DiffProgress {
        table: String,
        peer: i64,
        ranges: i64,
        rows: i64,
    },

    #[error("repair of {table}: {keys} keys repaired so far")]
    RepairProgress { table: String, keys: i64 },

    #[error("a value of column \"{column}\" of {table} is not UTF-8 text, which repair carries values as")]
    ValueNotUtf8 { table: String, column: String },

    #[error("table {table}: {keys} keys reconciled across the nodes")]
    MeshRepaired { table: String, keys: i64 },

    #[error("a tombstone of table {table} was ignored: {reason}")]
    TombstoneIgnored { table: String, reason: String },

    #[error("TRUNCATE of replicated table {table} is refused")]
    TruncateRefused { table: String },

    #[error("table {table} is still published to this node's peers")]
    UnreplicateInMesh { table: String },

    #[error(
        "sequence {sequence} (column \"{column}\" of {table}) cannot be made node-safe: {reason}"
    )]
    SequenceNotNodeSafe {
        sequence: String,
        table: String,
        column: String,
        reason: String,
    },

    #[error("sequence {sequence} (column \"{column}\" of {table}) holds integers: node-safe for node ids up to 127, with about 16.7 million values per node")]
    SequenceNarrow {
        sequence: String,
        table: String,
        column: String,
    },

    // ---- counters, the extension itself ---------------------------------------------------
    #[error("mm_conflict's conflict counters are not available")]
    CountersNotLoaded,

    #[error("mm_conflict's {object} is damaged")]
    ExtensionDamaged { object: String, detail: String },

    /// A broken invariant of mm_conflict itself (never the user's input).
    #[error("mm_conflict internal error: {what}")]
    Internal { what: String },
}

fn create_mesh_name() -> String {
    "create_mesh()".into()
}

impl MmError {
    pub fn sqlstate(&self) -> PgSqlErrorCode {
        use MmError::*;
        use PgSqlErrorCode::*;
        match self {
            BadArgument(PolicyError::NodeIdNotInteger { .. }) => {
                ERRCODE_INVALID_TEXT_REPRESENTATION
            }
            BadArgument(PolicyError::NodeIdOutOfRange { .. }) | NodeIdOutOfRange { .. } => {
                ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE
            }
            BadArgument(PolicyError::DuplicateDeltaColumn { .. }) => ERRCODE_DUPLICATE_COLUMN,
            BadArgument(_)
            | BadMeshSpec { .. }
            | BadDeltaSpec { .. }
            | EmptyNodeName
            | MeshWithoutTables => ERRCODE_INVALID_PARAMETER_VALUE,
            SubscribeToSelf { .. } | PeerIsAnotherNode { .. } | BadInternalArgument { .. } => {
                ERRCODE_INVALID_PARAMETER_VALUE
            }
            WrongTriggerEvent { .. } | TriggerOnWrongTable { .. } | TruncateGuardEvent { .. } => {
                ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED
            }
            MissingColumn { .. } | UnknownCriterionColumn { .. } | UnknownDeltaColumn { .. } => {
                ERRCODE_UNDEFINED_COLUMN
            }
            DeltaColumnNotAllowed { .. } => ERRCODE_INVALID_TABLE_DEFINITION,
            DeltaColumnNull { .. } | KeyColumnNull { .. } => ERRCODE_NOT_NULL_VIOLATION,
            DeltaOutOfRange { .. } => ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
            DeltaStateMalformed { .. } => ERRCODE_DATA_CORRUPTED,
            UnsupportedColumnType { .. } => ERRCODE_DATATYPE_MISMATCH,
            LocalConflict { .. } => ERRCODE_TRIGGERED_DATA_CHANGE_VIOLATION,
            NotATable { .. } | ExtensionTable { .. } => ERRCODE_WRONG_OBJECT_TYPE,
            OtherResolveTrigger { .. } | SubscribedElsewhere { .. } | SlotInUse { .. } => {
                ERRCODE_DUPLICATE_OBJECT
            }
            NoPrimaryKey { .. }
            | NotReplicated { .. }
            | NoNodeId
            | NodeIdTaken { .. }
            | DblinkMissing { .. }
            | PeerWalLevel { .. }
            | PeerWithoutNodeId { .. }
            | RemoteWalLevel { .. }
            | RemoteIsAnotherNode { .. }
            | CountersNotLoaded
            | ExtensionDamaged { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            NullArgument { .. } => ERRCODE_NULL_VALUE_NOT_ALLOWED,
            NotSuperuser { .. }
            | TombstonesNotReadable { .. }
            | RemoteNotSuperuser
            | HiddenByRowSecurity { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE,
            TruncateRefused { .. } => ERRCODE_FEATURE_NOT_SUPPORTED,
            UnreplicateInMesh { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            SequenceNotNodeSafe { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            SequenceNarrow { .. } | TombstoneIgnored { .. } => ERRCODE_WARNING,
            CannotConnect { .. } => ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
            SlotStillActive { .. } => ERRCODE_OBJECT_IN_USE,
            PeerWithoutExtension { .. } | PeerWithoutPublication { .. } => ERRCODE_UNDEFINED_OBJECT,
            MeshInWrittenTransaction { .. } => ERRCODE_ACTIVE_SQL_TRANSACTION,
            RemoteTooOld { .. } => ERRCODE_FEATURE_NOT_SUPPORTED,
            RemoteWithoutPackage => ERRCODE_UNDEFINED_FILE,
            RemoteTableMissing { .. } => ERRCODE_UNDEFINED_TABLE,
            TriggerFiresFirst { .. } | TablesDiffer { .. } | DroppedWithProblems { .. } => {
                ERRCODE_WARNING
            }
            AlreadySubscribed { .. }
            | NotInMesh
            | DiffProgress { .. }
            | RepairProgress { .. }
            | MeshRepaired { .. } => ERRCODE_SUCCESSFUL_COMPLETION,
            NotAPeer { .. } | NotANode { .. } => ERRCODE_UNDEFINED_OBJECT,
            RemoveSelf { .. } | NegativeInterval { .. } | EmptyArgument { .. } => {
                ERRCODE_INVALID_PARAMETER_VALUE
            }
            DdlTableNotReplicated { .. } => ERRCODE_SUCCESSFUL_COMPLETION,
            NotFullMesh { .. } | NoPeers { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            DdlNotTransactional { .. } => ERRCODE_ACTIVE_SQL_TRANSACTION,
            DdlRename { .. } | DdlDropsKeyColumn { .. } | PeerWithoutDdl { .. } => {
                ERRCODE_FEATURE_NOT_SUPPORTED
            }
            BareDdl { .. } => ERRCODE_WARNING,
            BareDdlRefused { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            BookkeepingColumnChanged { .. } | PrimaryKeyDropped { .. } => {
                ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST
            }
            NodeIdInUse { .. } => ERRCODE_DUPLICATE_OBJECT,
            CatchUpTimeout { .. } | StepTimeout { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            ValueNotUtf8 { .. } => ERRCODE_UNTRANSLATABLE_CHARACTER,
            Internal { .. } => ERRCODE_INTERNAL_ERROR,
        }
    }

    pub fn detail(&self) -> Option<String> {
        use MmError::*;
        Some(match self {
            LocalConflict { detail, .. } | ExtensionDamaged { detail, .. } => detail.clone(),
            CannotConnect { detail, .. } => detail.clone(),
            NoPrimaryKey { .. } => {
                "Replicated inserts, updates and deletes find their row by primary key.".into()
            }
            NodeIdTaken { .. } => "Replicated tables and subscriptions carry the node id.".into(),
            NotANode { .. } => {
                "Neither this node nor any peer it reached has a subscription, slot or peer row for it (a node removed already has none)."
                    .into()
            }
            DdlRename { .. } => {
                "A change already on its way under the old name stops replication on a node that has the new one, and writes keep sending such changes until every node has renamed."
                    .into()
            }
            DdlDropsKeyColumn { .. } | PrimaryKeyDropped { .. } => {
                "Peers find the rows of a replicated change by their primary key.".into()
            }
            DdlNotTransactional { .. } => {
                "replicate_ddl() runs the command in one transaction on every node and commits them together."
                    .into()
            }
            BookkeepingColumnChanged { .. } => {
                "mm_resolve reads and writes it on every row; without it every write to the table would fail."
                    .into()
            }
            BareDdl { .. } | BareDdlRefused { .. } => {
                "Until every node has made the same change, a change that one side sends and the other cannot take stops replication."
                    .into()
            }
            NotFullMesh { .. } => {
                "remove_node() and replicate_ddl() wait for changes that travel through the subscriptions between every two nodes."
                    .into()
            }
            CatchUpTimeout { .. } => {
                "remove_node() drops nothing until every survivor has every change of the node that any survivor received; the stopped subscriptions were enabled again."
                    .into()
            }
            NotSuperuser { function } if function == "table_diff()" || function == "repair()" => {
                "It reaches the peers with the connection strings of this node's subscriptions, which only a superuser may read; repair writes versions as replication does."
                    .into()
            }
            NotSuperuser { function } if function == "replicate_ddl()" || function == "_ddl_apply()" => {
                "It runs the command on every node as the role its connections to the peers log in as, with the connection strings of this node's subscriptions, which only a superuser may read."
                    .into()
            }
            NotSuperuser { .. } => {
                "mm_conflict creates and drops subscriptions and replication slots, which needs a superuser on every node."
                    .into()
            }
            TombstonesNotReadable { .. } => {
                "A tombstone tells that a key of the table was deleted, when, and on which node."
                    .into()
            }
            RemoteNotSuperuser => {
                "mm_conflict creates subscriptions and replication slots there, which needs a superuser."
                    .into()
            }
            DblinkMissing { .. } => {
                "Only the functions that reach other nodes need it; the trigger does not.".into()
            }
            SlotInUse { .. } => {
                "Another subscriber (or a mesh in another database of that cluster) uses it.".into()
            }
            MeshInWrittenTransaction { function } if function == "replicate_ddl()" => {
                "replicate_ddl() makes the change on this node in a session of its own, which would wait for this transaction's locks; and it commits there whatever this transaction does."
                    .into()
            }
            MeshInWrittenTransaction { .. } => {
                "Creating replication slots waits for every open transaction that has written, this one included."
                    .into()
            }
            TablesDiffer { .. } => {
                "create_mesh() does not copy rows; rows that differ now stay different until written again or repaired."
                    .into()
            }
            CountersNotLoaded => {
                "They live in shared memory, which an extension gets only when loaded at server start."
                    .into()
            }
            DroppedWithProblems { problems } => problems.join("\n"),
            SequenceNotNodeSafe { .. } | SequenceNarrow { .. } => {
                "Each node draws its own values from a sequence (it steps by a fixed increment from its own residue), so that rows inserted on different nodes never take the same key."
                    .into()
            }
            TruncateRefused { .. } => {
                "TRUNCATE is neither versioned nor replicated by mm_conflict: on one node it would leave the others with the rows, and a later change could bring them back."
                    .into()
            }
            UnreplicateInMesh { .. } => {
                "Peers would go on sending its changes here, where without mm_resolve the relayed copy of an insert is a duplicate key that stops this node's apply workers."
                    .into()
            }
            DeltaOutOfRange { detail, .. } | DeltaStateMalformed { detail, .. } => detail.clone(),
            _ => return None,
        })
    }

    pub fn hint(&self) -> Option<String> {
        use MmError::*;
        Some(match self {
            BadArgument(PolicyError::WrongArgCount { .. }) => {
                "Use mm_resolve(node_id, criterion, first|last [, preferred_node] [, 'delta=<column>' ...]), or mm_resolve(node_id, 'nodeid', winning_node [, preferred_node] [, 'delta=<column>' ...])."
                    .into()
            }
            BadArgument(PolicyError::BadDirection { .. }) => {
                "Argument 3 is first or last (for criterion nodeid: the winning node id).".into()
            }
            BadInternalArgument { .. } => {
                "It is one of mm_conflict's own helpers, called by its functions with what they computed; call the documented functions instead."
                    .into()
            }
            TriggerOnWrongTable { .. } => {
                "Drop this trigger: CREATE EXTENSION puts the ones mm_conflict needs in place (on a replicated table, mm_conflict.replicate_table installs mm_resolve)."
                    .into()
            }
            WrongTriggerEvent { .. } => {
                "CREATE TRIGGER ... BEFORE INSERT OR UPDATE OR DELETE ON tbl FOR EACH ROW EXECUTE FUNCTION mm_resolve(...)"
                    .into()
            }
            MissingColumn { add_column_sql, .. } => format!("Run: {add_column_sql}"),
            BadDeltaSpec { .. } => {
                "delta_columns is a JSON object of the tables' names and their delta columns: {\"accounts\": [\"balance\"]}."
                    .into()
            }
            UnknownDeltaColumn { .. } | DeltaColumnNotAllowed { .. } => {
                "A delta column is a smallint, integer, bigint or numeric column of the table that is not part of its primary key, not generated, and not a bookkeeping or criterion column."
                    .into()
            }
            DeltaColumnNull { .. } => {
                "A delta column counts changes; write 0 instead of NULL (or give the column DEFAULT 0)."
                    .into()
            }
            KeyColumnNull { .. } => {
                "The column is part of the primary key, which mm_resolve reads before the row is written. A BEFORE trigger that fills it in must fire before mm_resolve's (triggers fire in the order of their names)."
                    .into()
            }
            DeltaOutOfRange { .. } => {
                "Widen the column's type on every node with mm_conflict.replicate_ddl (for example to bigint or numeric)."
                    .into()
            }
            DeltaStateMalformed { .. } => {
                "mm_delta was written behind mm_resolve. Run mm_conflict.repair on the table from a node whose rows are right."
                    .into()
            }
            UnknownCriterionColumn { .. } => {
                "The criterion is last_xacttime, last_stattime, nodeid, or the name of a timestamp/timestamptz column of the table."
                    .into()
            }
            NoPrimaryKey { table } => {
                format!("Add one with ALTER TABLE {table} ADD PRIMARY KEY (...).")
            }
            LocalConflict { hint, .. } => hint.clone(),
            NotATable { .. } => {
                "Views, foreign tables and other relations hold no rows of their own; use the table itself."
                    .into()
            }
            NotReplicated { table } => format!(
                "Run SELECT mm_conflict.replicate_table('{}');",
                table.replace('\'', "''")
            ),
            OtherResolveTrigger { table, trigger } => format!(
                "Drop it first (DROP TRIGGER \"{}\" ON {table}); replicate_table creates its own.",
                trigger.replace('"', "\"\"")
            ),
            TriggerFiresFirst { .. } => {
                "Rename it so that it sorts after \"!mm_resolve\", or it also runs for changes that lose."
                    .into()
            }
            NoNodeId => {
                "Run SELECT mm_conflict.node_init(<node id>, <name>), or set up the whole mesh with mm_conflict.create_mesh()."
                    .into()
            }
            NodeIdTaken { .. } => "Run SELECT mm_conflict.drop_mesh() first to change it.".into(),
            DblinkMissing { .. } => {
                "Run CREATE EXTENSION dblink; on its own first (dblink is part of contrib: install the server's contrib package where it is missing), then call again."
                    .into()
            }
            CannotConnect { .. } => {
                "Check that the node runs and that its conninfo works from this node's host.".into()
            }
            SubscribedElsewhere { subscription, .. } => format!(
                "Change it with ALTER SUBSCRIPTION \"{}\" CONNECTION '...', or drop the mesh first.",
                subscription.replace('"', "\"\"")
            ),
            PeerWithoutExtension { .. } => {
                "Run CREATE EXTENSION mm_conflict there, then node_init() and replicate_table()."
                    .into()
            }
            PeerWalLevel { .. } | RemoteWalLevel { .. } => {
                "Set wal_level = logical there and restart it.".into()
            }
            PeerWithoutNodeId { peer } => format!("Run SELECT mm_conflict.node_init({peer}) there."),
            PeerIsAnotherNode { .. } => {
                "Check the conninfo, or the node id given.".into()
            }
            PeerWithoutPublication { .. } => {
                "Run SELECT mm_conflict.replicate_table(...) there first.".into()
            }
            BadMeshSpec { .. } => {
                r#"nodes is a JSON array of objects: [{"id": 1, "name": "a", "conninfo": "host=... dbname=..."}, ...]"#.into()
            }
            MeshInWrittenTransaction { .. } => {
                "Call it on its own, outside an explicit transaction block.".into()
            }
            RemoteTooOld { .. } => "mm_conflict needs PostgreSQL 15 or later.".into(),
            RemoteWithoutPackage => {
                "Install the mm_conflict package (cargo pgrx install) there.".into()
            }
            RemoteTableMissing { .. } => {
                "Create the tables on every node first (same schema, same columns).".into()
            }
            RemoteIsAnotherNode { .. } => {
                "Fix the node list, or run mm_conflict.drop_mesh() there first.".into()
            }
            TablesDiffer { table } => format!(
                "Run SELECT mm_conflict.repair('{}') on one node (or pass repair => true to create_mesh()) to write each row's winning version on every node.",
                table.replace('\'', "''")
            ),
            NotANode { .. } => {
                "SELECT node_id FROM mm_conflict.status lists the peers of this node.".into()
            }
            NodeIdInUse { node } => format!(
                "Choose another id, or take the old node {node} out first with SELECT mm_conflict.remove_node({node})."
            ),
            NoPeers { function } if function == "replicate_ddl()" => {
                "replicate_ddl() changes every node of a mesh; on a node without peers, run the command directly."
                    .into()
            }
            NoPeers { .. } => {
                "add_node() adds a node to a running mesh; start one with mm_conflict.create_mesh()."
                    .into()
            }
            DdlNotTransactional { .. } => {
                "Run such a command on each node by hand (indexes are not replicated, so CREATE INDEX CONCURRENTLY can run node by node); a unique index that must hold on every node goes through replicate_ddl() without CONCURRENTLY."
                    .into()
            }
            DdlRename { .. } => {
                "Add a column with the new name, copy the values and drop the old column, each through replicate_ddl(); or stop writes on every node and rename on each by hand."
                    .into()
            }
            PeerWithoutDdl { .. } => {
                "Update the extension there (ALTER EXTENSION mm_conflict UPDATE), then call again.".into()
            }
            BareDdl { .. } | BareDdlRefused { .. } => {
                "Change replicated tables with SELECT mm_conflict.replicate_ddl('<command>'), which changes every node together (the setting mm_conflict.bare_ddl says what happens otherwise: warn, error or allow)."
                    .into()
            }
            BookkeepingColumnChanged { .. } | PrimaryKeyDropped { .. } => {
                "Stop replicating the table first (mm_conflict.unreplicate_table), or leave the column as it is."
                    .into()
            }
            NotFullMesh { node, peer } => format!(
                "Run SELECT mm_conflict.subscribe({peer}, '<conninfo of node {peer}>') on node {node}, then call again."
            ),
            RemoveSelf { .. } => {
                "Run remove_node() on a node that stays in the mesh (drop_mesh() takes a node out from within).".into()
            }
            StepTimeout { .. } => {
                "Look at mm_conflict.status there for a stopped worker or an error in its log, then call again, with a longer timeout if needed.".into()
            }
            CatchUpTimeout { .. } => {
                "Look at mm_conflict.status on both for a stopped worker or a long lag, then call again, with a longer timeout if needed.".into()
            }
            NotAPeer { .. } => {
                "SELECT node_id, node_name FROM mm_conflict.peer lists this node's peers.".into()
            }
            CountersNotLoaded => {
                "Add mm_conflict to shared_preload_libraries in postgresql.conf and restart the server."
                    .into()
            }
            HiddenByRowSecurity { .. } => {
                "Run it as the table's owner or as a role with BYPASSRLS.".into()
            }
            ValueNotUtf8 { .. } => "repair() needs databases in UTF-8 encoding.".into(),
            TombstonesNotReadable { .. } => {
                "table_diff() and repair() read tombstones for their caller, who must be a superuser."
                    .into()
            }
            SequenceNotNodeSafe { table, column, sequence, .. }
            | SequenceNarrow { table, column, sequence } => format!(
                "Make the key a bigint: ALTER TABLE {table} ALTER COLUMN \"{}\" TYPE bigint; ALTER SEQUENCE {sequence} AS bigint;",
                column.replace('"', "\"\"")
            ),
            TruncateRefused { table } => format!(
                "Delete the rows instead (DELETE FROM {table}): deletes are versioned and reach every node."
            ),
            UnreplicateInMesh { table } => format!(
                "Stop writes to it; on every node run ALTER PUBLICATION mm_conflict DROP TABLE {table}; wait until SELECT mm_conflict.wait_for_sync() returns true on every node; then run unreplicate_table on every node. Or drop the whole mesh with mm_conflict.drop_mesh(everywhere => true)."
            ),
            ExtensionDamaged { .. } => {
                "Recreate the extension (DROP EXTENSION mm_conflict; CREATE EXTENSION mm_conflict), or restore the object from a dump."
                    .into()
            }
            _ => return None,
        })
    }

    fn report_at(&self, level: PgLogLevel) {
        let mut report = ErrorReport::new(self.sqlstate(), self.to_string(), "mm_conflict");
        if let Some(detail) = self.detail() {
            report = report.set_detail(detail);
        }
        if let Some(hint) = self.hint() {
            report = report.set_hint(hint);
        }
        report.report(level);
    }

    /// Raises this error as a PostgreSQL `ERROR` with its SQLSTATE, detail and hint.
    /// Never returns: control goes back to PostgreSQL's error handling.
    #[track_caller]
    pub fn raise(self) -> ! {
        self.report_at(PgLogLevel::ERROR);
        unreachable!("ereport(ERROR) returned")
    }

    /// Reports this as a `WARNING` (for the variants that are warnings) and goes on.
    pub fn warn(&self) {
        self.report_at(PgLogLevel::WARNING);
    }

    /// Reports this as a `NOTICE` (for the variants that only inform) and goes on.
    pub fn notice(&self) {
        self.report_at(PgLogLevel::NOTICE);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_raises_variants_by_name() {
        let e: MmError = serde_json::from_value(
            serde_json::json!({"error": "cannot_connect", "who": "node 2", "detail": "refused"}),
        )
        .unwrap();
        assert_eq!(e.to_string(), "cannot connect to node 2");
        assert_eq!(e.detail().as_deref(), Some("refused"));
        assert!(
            serde_json::from_value::<MmError>(serde_json::json!({"error": "no_such"})).is_err()
        );
        // A missing field is refused too.
        assert!(
            serde_json::from_value::<MmError>(serde_json::json!({"error": "cannot_connect"}))
                .is_err()
        );
    }
}
