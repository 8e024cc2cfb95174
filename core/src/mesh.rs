//! The plans of the mesh functions, as data computed here and tested without a cluster:
//! `create_mesh`'s steps (the command each runs on which node, and how each is undone,
//! [`create_plan`]) and the error that reports a failed step ([`failure`]); what `create_mesh` and
//! `subscribe` ask a node before they change anything ([`inspect_query`], [`peer_query`]); the
//! `CREATE SUBSCRIPTION` they run ([`subscription_sql`]). The SQL text sent to nodes quotes every
//! value once ([`crate::sql`]); no SQL is nested in a string inside another (a `DO` block's body
//! is dollar-quoted with a tag it does not contain). The checks of what was found, which raise
//! mm_conflict's errors, live beside the runner (`src/mesh/plan.rs`).

use serde::Deserialize;

use crate::sql::{sql_ident, sql_literal};

/// The trigger `replicate_table` creates ("!" sorts before letters, digits and "_": it runs
/// before user triggers).
pub const TRIGGER: &str = "!mm_resolve";

/// One element of `create_mesh`'s `nodes` argument.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub id: i64,
    #[serde(default)]
    pub name: Option<String>,
    pub conninfo: String,
}

/// This database's oid, as a scalar subquery (subscriptions are per database, slots name theirs).
pub const THIS_DATABASE: &str =
    "(SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())";

/// The publication every node offers its peers.
pub const PUBLICATION: &str = "mm_conflict";

/// Changes from node `publisher` to node `subscriber` travel through a slot on the publisher and a
/// subscription on the subscriber, both with this name.
pub fn channel_name(publisher: i64, subscriber: i64) -> String {
    format!("mm_conflict_{publisher}_to_{subscriber}")
}

/// The publisher and subscriber of a channel named by [`channel_name`] (`None`: another name).
pub fn parse_channel(name: &str) -> Option<(i64, i64)> {
    let (publisher, subscriber) = name.strip_prefix("mm_conflict_")?.split_once("_to_")?;
    let number = |s: &str| -> Option<i64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    Some((number(publisher)?, number(subscriber)?))
}

/// `v` as a SQL array literal of text.
fn text_array(values: &[String]) -> String {
    format!(
        "ARRAY[{}]::text[]",
        values
            .iter()
            .map(|v| sql_literal(v))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The query `create_mesh` runs on every node before changing anything; its one value is a JSON
/// object read as [`NodeState`]. `tables` are stable table names.
pub fn inspect_query(tables: &[String]) -> String {
    let tables = text_array(tables);
    format!(
        "SELECT pg_catalog.json_build_object(
            'superuser', pg_catalog.current_setting('is_superuser') = 'on',
            'wal_level', pg_catalog.current_setting('wal_level'),
            'version', pg_catalog.current_setting('server_version_num')::int,
            'extension', EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'mm_conflict'),
            'available', EXISTS (SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = 'mm_conflict'),
            'missing', (SELECT coalesce(pg_catalog.json_agg(t), '[]') FROM pg_catalog.unnest({tables}) t
                         WHERE pg_catalog.to_regclass(t) IS NULL),
            'replicated', (SELECT coalesce(pg_catalog.json_agg(t), '[]') FROM pg_catalog.unnest({tables}) t
                            WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_trigger
                                           WHERE tgrelid = pg_catalog.to_regclass(t) AND tgname = {trigger})),
            'publication', EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = {publication}),
            'subscriptions', (SELECT coalesce(pg_catalog.json_agg(subname), '[]') FROM pg_catalog.pg_subscription
                               WHERE subdbid = {THIS_DATABASE}
                                 AND subname ~ '^mm_conflict_[0-9]+_to_[0-9]+$'))",
        publication = sql_literal(PUBLICATION),
        trigger = sql_literal(TRIGGER),
    )
}

/// A node as `create_mesh` found it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct NodeState {
    pub superuser: bool,
    pub wal_level: String,
    pub version: i64,
    pub extension: bool,
    pub available: bool,
    pub missing: Vec<String>,
    pub replicated: Vec<String>,
    pub publication: bool,
    pub subscriptions: Vec<String>,
    /// Its node id, when it has the extension and one.
    #[serde(default)]
    pub node_id: Option<i64>,
}

/// The policy a table of the mesh gets (`replicate_table`'s arguments).
#[derive(Clone, Debug, Default)]
pub struct TablePolicy {
    pub criterion: String,
    pub method: String,
    pub preferred_node: Option<i64>,
    /// Its delta columns (none: the argument is left out, as a node before 0.8.0 expects).
    pub delta_columns: Vec<String>,
}

/// What a step does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// Runs `command` on the node (as one transaction there).
    Exec,
    /// Compares `table`'s checksum across all nodes, and warns when they differ.
    CompareTable(String),
}

/// SQL sent to a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remote {
    pub sql: String,
    /// True for a query whose one value is read back (`dblink`); false for a command that returns
    /// no rows (`dblink_exec`).
    pub query: bool,
}

impl Remote {
    pub fn exec(sql: String) -> Remote {
        Remote { sql, query: false }
    }

    pub fn query(sql: String) -> Remote {
        Remote { sql, query: true }
    }
}

/// One step of `create_mesh`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub kind: StepKind,
    /// The node it runs on (an index into the node list).
    pub node: usize,
    /// What it does, for messages ("subscribe to node 2").
    pub name: String,
    pub command: Remote,
    /// What undoes it on the same node, and what the undo is called in messages. A query as undo
    /// returns NULL when everything was undone, or a description of what was not.
    pub undo: Option<(Remote, String)>,
}

/// Statements as one remote transaction that returns no rows (a `DO` block), for `dblink_exec`.
pub(crate) fn as_block(statements: &[String]) -> String {
    let body = statements
        .iter()
        .map(|s| format!("{s};"))
        .collect::<Vec<_>>()
        .join(" ");
    // A dollar-quote tag that the body does not contain.
    let mut tag = String::from("mm");
    while body.contains(&format!("${tag}$")) {
        tag.push('_');
    }
    format!("DO ${tag}$BEGIN {body} END${tag}$")
}

/// The statements that set node `node` (found as `state`) up in one transaction: the extension,
/// its id, each table with its policy; and the statements that undo what they add (empty when
/// they add nothing: what existed before stays).
pub(crate) fn node_setup(
    node: &NodeSpec,
    state: &NodeState,
    tables: &[(String, TablePolicy)],
) -> (Vec<String>, Vec<String>) {
    let mut statements = vec![
        // In public, as a plain CREATE EXTENSION would: remote sessions search pg_catalog only,
        // which would otherwise become the extension's schema (and dblink's).
        "CREATE EXTENSION IF NOT EXISTS mm_conflict SCHEMA public".to_string(),
        format!(
            "PERFORM mm_conflict.node_init({}, {})",
            node.id,
            node.name
                .as_deref()
                .map_or_else(|| "NULL".to_string(), sql_literal)
        ),
    ];
    let mut undo = Vec::new();
    for (t, policy) in tables {
        let delta = if policy.delta_columns.is_empty() {
            String::new()
        } else {
            let columns: Vec<String> = policy
                .delta_columns
                .iter()
                .map(|c| sql_literal(c))
                .collect();
            format!(", ARRAY[{}]::pg_catalog.text[]", columns.join(", "))
        };
        statements.push(format!(
            "PERFORM mm_conflict.replicate_table({}, {}, {}, {}{delta})",
            sql_literal(t),
            sql_literal(&policy.criterion),
            sql_literal(&policy.method),
            policy
                .preferred_node
                .map_or_else(|| "NULL::integer".to_string(), |p| p.to_string())
        ));
        if !state.replicated.contains(t) {
            undo.push(format!(
                "PERFORM mm_conflict.unreplicate_table({})",
                sql_literal(t)
            ));
        }
    }
    if !state.publication {
        undo.push(format!(
            "DROP PUBLICATION IF EXISTS {}",
            sql_ident(PUBLICATION)
        ));
    }
    if state.node_id.is_none() {
        undo.push("DELETE FROM mm_conflict.node".to_string());
    }
    if !state.extension {
        // Dropping the extension drops everything above with it.
        undo = vec!["DROP EXTENSION mm_conflict".to_string()];
    }
    (statements, undo)
}

/// `create_mesh`'s plan: set up every node (one transaction each: extension, node id, tables),
/// compare the tables, then the N−1 subscriptions of every node. A step that fails undoes the
/// steps before it, newest first; what existed before the call stays.
pub fn create_plan(
    nodes: &[NodeSpec],
    states: &[NodeState],
    tables: &[(String, TablePolicy)],
) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut tables_added = false;
    for (i, (node, state)) in nodes.iter().zip(states).enumerate() {
        let (statements, undo) = node_setup(node, state, tables);
        tables_added |= tables.iter().any(|(t, _)| !state.replicated.contains(t));
        steps.push(Step {
            kind: StepKind::Exec,
            node: i,
            name: "install the extension, node_init, replicate_table".into(),
            command: Remote::exec(as_block(&statements)),
            undo: (!undo.is_empty()).then(|| {
                (
                    Remote::exec(as_block(&undo)),
                    format!("setup of node {}", node.id),
                )
            }),
        });
    }
    for (t, _) in tables {
        steps.push(Step {
            kind: StepKind::CompareTable(t.clone()),
            node: 0,
            name: format!("compare table {t}"),
            command: Remote::query(format!(
                "SELECT mm_conflict.table_checksum({})",
                sql_literal(t)
            )),
            undo: None,
        });
    }
    for (i, (node, state)) in nodes.iter().zip(states).enumerate() {
        for peer in nodes.iter().filter(|p| p.id != node.id) {
            let channel = channel_name(peer.id, node.id);
            if state.subscriptions.contains(&channel) {
                if tables_added {
                    steps.push(Step {
                        kind: StepKind::Exec,
                        node: i,
                        name: format!("refresh the subscription to node {}", peer.id),
                        command: Remote::exec(format!(
                            "ALTER SUBSCRIPTION {} REFRESH PUBLICATION WITH (copy_data = false)",
                            sql_ident(&channel)
                        )),
                        undo: None,
                    });
                }
                continue;
            }
            steps.push(Step {
                kind: StepKind::Exec,
                node: i,
                name: format!("subscribe to node {}", peer.id),
                command: Remote::exec(as_block(&[format!(
                    "PERFORM mm_conflict.subscribe({}, {}, false)",
                    peer.id,
                    sql_literal(&peer.conninfo)
                )])),
                undo: Some((
                    Remote::query(format!("SELECT mm_conflict._unsubscribe({})", peer.id)),
                    format!("subscription of node {} to node {}", node.id, peer.id),
                )),
            });
        }
    }
    steps
}

/// The message and detail of a failed `create_mesh` step (the original error's SQLSTATE and hint
/// are kept): which node, which step, what was undone.
pub fn failure(
    node_label: &str,
    step: &str,
    message: &str,
    detail: Option<&str>,
    undone: &[String],
    not_undone: &[String],
) -> (String, String) {
    failure_of(
        "create_mesh()",
        node_label,
        step,
        message,
        detail,
        undone,
        not_undone,
    )
}

/// [`failure`] of `function` (`"remove_node()"`).
pub fn failure_of(
    function: &str,
    node_label: &str,
    step: &str,
    message: &str,
    detail: Option<&str>,
    undone: &[String],
    not_undone: &[String],
) -> (String, String) {
    let message = format!(
        "{function} failed on {node_label} at step \"{step}\": {}",
        message.strip_prefix("mm_conflict: ").unwrap_or(message)
    );
    let mut lines: Vec<String> = detail
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .into_iter()
        .collect();
    if undone.is_empty() && not_undone.is_empty() {
        lines.push("Nothing was changed.".into());
    } else {
        lines.push(format!(
            "Undone: {}.",
            if undone.is_empty() {
                "nothing".to_string()
            } else {
                undone.join("; ")
            }
        ));
    }
    if !not_undone.is_empty() {
        lines.push(format!("Could not undo: {}.", not_undone.join("; ")));
    }
    (message, lines.join("\n"))
}

/// A peer as `subscribe` found it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct PeerState {
    /// The peer's mm_conflict version, if it has the extension.
    pub extension: Option<String>,
    pub wal_level: String,
    #[serde(default)]
    pub node_id: Option<i64>,
    #[serde(default)]
    pub node_name: Option<String>,
    #[serde(default)]
    pub publication: bool,
    /// The state of the replication slot named for this subscription, if it exists.
    #[serde(default)]
    pub slot_active: Option<bool>,
    #[serde(default)]
    pub slot_database: Option<String>,
    #[serde(default)]
    pub database: Option<String>,
}

/// The query `subscribe` runs on the peer; its one value is read as [`PeerState`]. The mesh
/// tables are read only when the extension is there (`extension_query`).
pub fn peer_query(channel: &str) -> String {
    format!(
        "SELECT pg_catalog.json_build_object(
            'extension', (SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'mm_conflict'),
            'wal_level', pg_catalog.current_setting('wal_level'),
            'publication', EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = {publication}),
            'slot_active', (SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = {channel}),
            'slot_database', (SELECT database FROM pg_catalog.pg_replication_slots WHERE slot_name = {channel}),
            'database', pg_catalog.current_database())",
        publication = sql_literal(PUBLICATION),
        channel = sql_literal(channel),
    )
}

/// The peer's identity, once it is known to have the extension.
pub const PEER_IDENTITY_QUERY: &str =
    "SELECT pg_catalog.json_build_object('node_id', node_id, 'node_name', node_name) FROM mm_conflict.node";

/// `CREATE SUBSCRIPTION` for `channel` (the slot exists already, created on the peer). From
/// PostgreSQL 16 on, `origin = any` is said explicitly: the mesh relies on relayed copies (a
/// subscription with `origin = none` drops every change a node applied from a third one, and
/// the copies that heal a late or lost change with it).
pub fn subscription_sql(
    channel: &str,
    conninfo: &str,
    copy_data: bool,
    server_version: i64,
) -> String {
    let origin = if server_version >= 160_000 {
        ", origin = any"
    } else {
        ""
    };
    format!(
        "CREATE SUBSCRIPTION {sub} CONNECTION {conninfo} PUBLICATION {publication} \
         WITH (create_slot = false, slot_name = {slot}, copy_data = {copy_data}, enabled = true{origin})",
        sub = sql_ident(channel),
        conninfo = sql_literal(conninfo),
        publication = sql_ident(PUBLICATION),
        slot = sql_literal(channel),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn node(id: i64, name: Option<&str>) -> NodeSpec {
        NodeSpec {
            id,
            name: name.map(str::to_string),
            conninfo: format!("host=h{id} password='it''s'"),
        }
    }

    /// A node without the extension, ready for it (also the membership plans' tests).
    pub(crate) fn fresh() -> NodeState {
        NodeState {
            superuser: true,
            wal_level: "logical".into(),
            version: 150_004,
            extension: false,
            available: true,
            missing: vec![],
            replicated: vec![],
            publication: false,
            subscriptions: vec![],
            node_id: None,
        }
    }

    fn policy() -> TablePolicy {
        TablePolicy {
            criterion: "last_xacttime".into(),
            method: "last".into(),
            preferred_node: Some(2),
            delta_columns: Vec::new(),
        }
    }

    fn tables(names: &[&str]) -> Vec<(String, TablePolicy)> {
        names.iter().map(|t| (t.to_string(), policy())).collect()
    }

    #[test]
    fn a_fresh_mesh_installs_compares_then_subscribes_with_undo_for_each() {
        let nodes = [node(1, Some("a")), node(2, None), node(3, None)];
        let states = vec![fresh(); 3];
        let steps = create_plan(&nodes, &states, &tables(&["public.mm"]));
        let kinds: Vec<(usize, &str)> = steps.iter().map(|s| (s.node, s.name.as_str())).collect();
        assert_eq!(kinds.len(), 3 + 1 + 6);
        assert_eq!(
            kinds[0],
            (0, "install the extension, node_init, replicate_table")
        );
        assert_eq!(steps[3].kind, StepKind::CompareTable("public.mm".into()));
        assert_eq!(kinds[4], (0, "subscribe to node 2"));
        assert_eq!(kinds[9], (2, "subscribe to node 2"));
        assert_eq!(
            steps[0].command.sql,
            "DO $mm$BEGIN CREATE EXTENSION IF NOT EXISTS mm_conflict SCHEMA public; PERFORM mm_conflict.node_init(1, 'a'); \
             PERFORM mm_conflict.replicate_table('public.mm', 'last_xacttime', 'last', 2); END$mm$"
        );
        assert!(steps[1].command.sql.contains("node_init(2, NULL)"));
        // A node without the extension is undone by dropping it.
        let (undo, what) = steps[0].undo.clone().unwrap();
        assert_eq!(undo.sql, "DO $mm$BEGIN DROP EXTENSION mm_conflict; END$mm$");
        assert_eq!(what, "setup of node 1");
        // Conninfos are quoted once.
        assert!(
            steps[4]
                .command
                .sql
                .contains("'host=h2 password=''it''''s'''"),
            "{}",
            steps[4].command.sql
        );
        assert_eq!(
            steps[4].undo.as_ref().unwrap().0,
            Remote::query("SELECT mm_conflict._unsubscribe(2)".into())
        );
    }

    #[test]
    fn what_existed_before_stays() {
        let nodes = [node(1, None), node(2, None)];
        let before = NodeState {
            extension: true,
            publication: true,
            replicated: vec!["public.mm".into()],
            subscriptions: vec![channel_name(2, 1)],
            node_id: Some(1),
            ..fresh()
        };
        let steps = create_plan(
            &nodes,
            &[before.clone(), fresh()],
            &tables(&["public.mm", "public.other"]),
        );
        // Node 1: only the new table is undone; its subscription to node 2 is refreshed.
        let undo = steps[0].undo.clone().unwrap().0.sql;
        assert!(undo.contains("unreplicate_table('public.other')"), "{undo}");
        assert!(
            !undo.contains("'public.mm'") && !undo.contains("DROP"),
            "{undo}"
        );
        let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"refresh the subscription to node 2"));
        assert_eq!(
            names.iter().filter(|n| n.starts_with("subscribe")).count(),
            1
        );
        // Nothing new on an existing node: no undo at all.
        let steps = create_plan(&nodes[..1], &[before], &tables(&["public.mm"]));
        assert_eq!(steps[0].undo, None);
    }

    #[test]
    fn delta_columns_are_passed_per_table_and_only_when_declared() {
        let nodes = [node(1, None), node(2, None)];
        let mut with_delta = tables(&["public.acct", "public.mm"]);
        with_delta[0].1.delta_columns = vec!["balance".into(), "it's".into()];
        let steps = create_plan(&nodes, &vec![fresh(); 2], &with_delta);
        let sql = &steps[1].command.sql;
        assert!(
            sql.contains("replicate_table('public.acct', 'last_xacttime', 'last', 2, ARRAY['balance', 'it''s']::pg_catalog.text[])"),
            "{sql}"
        );
        assert!(
            sql.contains("replicate_table('public.mm', 'last_xacttime', 'last', 2);"),
            "{sql}"
        );
    }

    #[test]
    fn dollar_quote_tags_avoid_the_body() {
        assert_eq!(
            as_block(&["SELECT '$mm$'".into()]),
            "DO $mm_$BEGIN SELECT '$mm$'; END$mm_$"
        );
    }

    #[test]
    fn failures_say_where_and_what_was_undone() {
        let (m, d) = failure(
            "node 2 (b)",
            "subscribe to node 1",
            "mm_conflict: boom",
            Some("why"),
            &[],
            &[],
        );
        assert_eq!(
            m,
            "create_mesh() failed on node 2 (b) at step \"subscribe to node 1\": boom"
        );
        assert_eq!(d, "why\nNothing was changed.");
        let (_, d) = failure("n", "s", "m", None, &["a".into()], &["b (x)".into()]);
        assert_eq!(d, "Undone: a.\nCould not undo: b (x).");
    }

    #[test]
    fn channel_names_parse_back() {
        assert_eq!(parse_channel(&channel_name(12, 3)), Some((12, 3)));
        for other in [
            "mm_conflict_1_to_",
            "mm_conflict_x_to_2",
            "mm_conflict_1_to_2_",
            "pg_1_to_2",
            "mm_conflict_+1_to_2",
        ] {
            assert_eq!(parse_channel(other), None, "{other}");
        }
    }

    #[test]
    fn subscriptions_say_origin_any_from_16() {
        assert!(!subscription_sql("c", "x", false, 150_010).contains("origin"));
        assert!(subscription_sql("c", "x", true, 180_006)
            .ends_with("copy_data = true, enabled = true, origin = any)"));
    }
}
