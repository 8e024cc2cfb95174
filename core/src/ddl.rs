//! The plan of `mm_conflict.replicate_ddl`: one schema change, run on every node of the mesh, from
//! what every node said ([`ddl_query`], read as [`DdlNodeState`]) and what a trial run of the
//! command on the calling node found ([`Restriction`]s) to the steps ([`ddl_plan`]).
//!
//! Why this order (docs/design.md has the long form):
//! * A change of the old shape that reaches a node of the new shape must still apply. PostgreSQL
//!   applies a change that lacks columns the table has (they keep their value, or take their
//!   default), but stops on a change that carries a column the table no longer has (dropped or
//!   renamed) or a table it no longer has. So when the command makes columns or tables disappear,
//!   every node first stops sending them (its publication's column list leaves the columns out,
//!   or the table leaves the publication: changes committed from then on do not carry them), and
//!   then every node waits, twice round, until every other node has confirmed all the WAL it had
//!   written: after the first round every change that carried them has been applied everywhere
//!   (and so every relayed copy of it written), after the second every relayed copy has been
//!   received too. Writes go on meanwhile.
//! * Then the command runs on every node, each in a transaction of its own
//!   (`mm_conflict._ddl_apply`: the command; the publication's full column lists back; a table it
//!   created joins the mesh there: trigger, publication, and the node's subscriptions know it,
//!   all in that transaction). Local writes to the tables it changes wait for the command's locks
//!   (they are not refused), and so do the apply workers: a change of the new shape from a node
//!   that committed first waits on a node that has not committed yet, and applies once it has.
//! * Commit: with two-phase commit where every node allows it (`PREPARE TRANSACTION` everywhere,
//!   then `COMMIT PREPARED` everywhere), else `COMMIT` node by node once the command ran on every
//!   node. Until the first commit every step has an undo, so a failure or a timeout leaves every
//!   node as it was.

use serde::Deserialize;

use crate::membership::{subscription_conninfo, Action, MemberStep};
use crate::mesh::{parse_channel, Remote, PUBLICATION, THIS_DATABASE};
use crate::sql::{sql_ident, sql_literal};

/// The query `replicate_ddl` runs on node `node` before changing anything; its one value is a
/// JSON object read as [`DdlNodeState`]. `me` is the node the call runs on.
pub fn ddl_query(node: i64, me: i64) -> String {
    format!(
        "SELECT pg_catalog.json_build_object(
            'node_id', (SELECT node_id FROM mm_conflict.node),
            'conninfo_of_caller', {from_me},
            'two_phase', pg_catalog.current_setting('max_prepared_transactions')::pg_catalog.int4 > 0,
            'subscriptions', (SELECT COALESCE(pg_catalog.json_agg(subname::pg_catalog.text), '[]')
                                FROM pg_catalog.pg_subscription WHERE subdbid = {THIS_DATABASE}),
            'can_apply', pg_catalog.to_regprocedure('mm_conflict._ddl_apply(text,text,integer,text)') IS NOT NULL
         )::pg_catalog.text",
        from_me = subscription_conninfo(me, node),
    )
}

/// A node as `replicate_ddl` found it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct DdlNodeState {
    /// Its node id (`None`: it has none).
    pub node_id: Option<i64>,
    /// The conninfo of its subscription from the calling node (how the call reaches its own node).
    #[serde(default)]
    pub conninfo_of_caller: Option<String>,
    /// Whether it allows prepared transactions (`max_prepared_transactions > 0`).
    pub two_phase: bool,
    /// The names of its subscriptions.
    pub subscriptions: Vec<String>,
    /// Whether its mm_conflict has `_ddl_apply` (0.7.0 or later).
    pub can_apply: bool,
}

impl DdlNodeState {
    /// The nodes it receives from (its mesh subscriptions), in ascending order.
    pub fn receives_from(&self) -> Vec<i64> {
        let me = self.node_id.unwrap_or(0);
        let mut from: Vec<i64> = self
            .subscriptions
            .iter()
            .filter_map(|s| parse_channel(s))
            .filter(|&(_, to)| to == me)
            .map(|(from, _)| from)
            .collect();
        from.sort_unstable();
        from.dedup();
        from
    }
}

/// What is wrong with the mesh `nodes` for `replicate_ddl`, before anything changes: a node that
/// does not receive from another one (`Err((node, peer))`), the other one being any node of
/// `nodes` or any node one of them receives from (a node the calling node does not know would
/// not get the change).
pub fn check_full_mesh(nodes: &[(i64, DdlNodeState)]) -> Result<(), (i64, i64)> {
    let mut all: Vec<i64> = nodes.iter().map(|(n, _)| *n).collect();
    for (_, state) in nodes {
        all.extend(state.receives_from());
    }
    all.sort_unstable();
    all.dedup();
    for (node, state) in nodes {
        let from = state.receives_from();
        if let Some(peer) = all.iter().find(|&p| p != node && !from.contains(p)) {
            return Err((*node, *peer));
        }
    }
    Ok(())
}

/// What must stop travelling before the command runs: a table whose columns (some of them) or
/// whose whole self the command makes disappear.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restriction {
    /// The table's SQL name (quoted, schema-qualified).
    pub table: String,
    /// The columns it keeps sending (quoted), or `None` when the table itself goes.
    pub keep: Option<Vec<String>>,
}

impl Restriction {
    /// The statements that make this node stop sending what disappears (one transaction).
    fn restrict(&self) -> String {
        let publication = sql_ident(PUBLICATION);
        match &self.keep {
            None => format!("ALTER PUBLICATION {publication} DROP TABLE {}", self.table),
            Some(columns) => format!(
                "ALTER PUBLICATION {publication} DROP TABLE {table}; \
                 ALTER PUBLICATION {publication} ADD TABLE {table} ({})",
                columns.join(", "),
                table = self.table
            ),
        }
    }

    /// What undoes [`Restriction::restrict`]: the table published again with every column.
    fn restore(&self) -> String {
        let publication = sql_ident(PUBLICATION);
        match &self.keep {
            None => format!("ALTER PUBLICATION {publication} ADD TABLE {}", self.table),
            Some(_) => format!(
                "ALTER PUBLICATION {publication} DROP TABLE {table}; \
                 ALTER PUBLICATION {publication} ADD TABLE {table}",
                table = self.table
            ),
        }
    }
}

/// One schema change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DdlChange<'a> {
    /// The command, as the user gave it.
    pub command: &'a str,
    /// The `search_path` it was given under on the calling node.
    pub search_path: &'a str,
    /// The node the call runs on.
    pub origin: i64,
    /// The change's id (the same on every node): `<origin>-<microseconds>`.
    pub id: &'a str,
    /// How long each lock the command takes may wait (milliseconds).
    pub lock_timeout_ms: i64,
}

impl DdlChange<'_> {
    /// The name of its prepared transactions (the same on every node).
    pub fn gid(&self) -> String {
        format!("mm_conflict_ddl_{}", self.id)
    }
}

/// Whether every node allows two-phase commit.
pub fn two_phase(nodes: &[(i64, DdlNodeState)]) -> bool {
    nodes.iter().all(|(_, s)| s.two_phase)
}

/// The steps of `replicate_ddl` on `nodes` (the calling node among them), in ascending node order.
/// The answer of each node's `apply the change` step is what `_ddl_apply` returns there.
pub fn ddl_plan(
    nodes: &[(i64, DdlNodeState)],
    change: &DdlChange,
    restrictions: &[Restriction],
) -> Vec<MemberStep> {
    let mut ids: Vec<i64> = nodes.iter().map(|(n, _)| *n).collect();
    ids.sort_unstable();
    let step = |node: i64, name: &str, action: Action, undo: Option<String>| MemberStep {
        node,
        name: name.into(),
        action,
        undo: undo.map(Remote::exec),
        drops: false,
    };
    let mut steps = Vec::new();
    if !restrictions.is_empty() {
        let restrict: Vec<String> = restrictions.iter().map(Restriction::restrict).collect();
        let restore: Vec<String> = restrictions.iter().map(Restriction::restore).collect();
        for &node in &ids {
            steps.push(step(
                node,
                "stop sending what the change removes",
                Action::Exec(Remote::exec(restrict.join("; "))),
                Some(restore.join("; ")),
            ));
        }
        for round in 1..=2 {
            for &node in &ids {
                let others: Vec<i64> = ids.iter().copied().filter(|&n| n != node).collect();
                steps.push(step(
                    node,
                    &format!("wait until every node has its changes (round {round})"),
                    Action::CatchUp(others),
                    None,
                ));
            }
        }
    }
    let timeout = format!(
        "SET LOCAL lock_timeout = {}",
        sql_literal(&format!("{}ms", change.lock_timeout_ms.max(1)))
    );
    for &node in &ids {
        steps.push(step(
            node,
            "apply the change",
            Action::Exec(Remote::query(format!(
                "BEGIN; {timeout}; SELECT mm_conflict._ddl_apply({}, {}, {}, {})",
                sql_literal(change.command),
                sql_literal(change.search_path),
                change.origin,
                sql_literal(change.id)
            ))),
            Some("ROLLBACK".into()),
        ));
    }
    let gid = sql_literal(&change.gid());
    let two_phase = two_phase(nodes);
    if two_phase {
        for &node in &ids {
            steps.push(step(
                node,
                "prepare the change",
                Action::Exec(Remote::exec(format!("PREPARE TRANSACTION {gid}"))),
                Some(format!("ROLLBACK PREPARED {gid}")),
            ));
        }
    }
    for &node in &ids {
        let mut commit = step(
            node,
            "commit the change",
            Action::Exec(Remote::exec(if two_phase {
                format!("COMMIT PREPARED {gid}")
            } else {
                "COMMIT".into()
            })),
            None,
        );
        commit.drops = true;
        steps.push(commit);
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::channel_name;

    fn node(id: i64, peers: &[i64], two_phase: bool) -> (i64, DdlNodeState) {
        (
            id,
            DdlNodeState {
                node_id: Some(id),
                conninfo_of_caller: Some(format!("host=n{id}")),
                two_phase,
                subscriptions: peers.iter().map(|p| channel_name(*p, id)).collect(),
                can_apply: true,
            },
        )
    }

    fn mesh(two_phase: bool) -> Vec<(i64, DdlNodeState)> {
        vec![
            node(2, &[1, 3], two_phase),
            node(1, &[2, 3], two_phase),
            node(3, &[1, 2], two_phase),
        ]
    }

    const CHANGE: DdlChange = DdlChange {
        command: "ALTER TABLE t DROP COLUMN c",
        search_path: "public",
        origin: 1,
        id: "1-42",
        lock_timeout_ms: 5000,
    };

    fn restriction() -> Vec<Restriction> {
        vec![Restriction {
            table: "\"public\".\"t\"".into(),
            keep: Some(vec!["\"id\"".into(), "\"mm_nodeid\"".into()]),
        }]
    }

    fn first(plan: &[MemberStep], name: &str) -> usize {
        plan.iter().position(|s| s.name.starts_with(name)).unwrap()
    }

    fn last(plan: &[MemberStep], name: &str) -> usize {
        plan.iter().rposition(|s| s.name.starts_with(name)).unwrap()
    }

    #[test]
    fn what_disappears_stops_travelling_and_drains_before_any_node_changes() {
        for two_phase in [true, false] {
            let plan = ddl_plan(&mesh(two_phase), &CHANGE, &restriction());
            let waits: Vec<usize> = plan
                .iter()
                .enumerate()
                .filter(|(_, s)| matches!(s.action, Action::CatchUp(_)))
                .map(|(k, _)| k)
                .collect();
            // Two rounds, each node waiting for every other one.
            assert_eq!(waits.len(), 6);
            for &k in &waits {
                let Action::CatchUp(others) = &plan[k].action else {
                    unreachable!()
                };
                assert_eq!(others.len(), 2);
                assert!(!others.contains(&plan[k].node));
            }
            assert!(last(&plan, "stop sending") < waits[0]);
            assert!(*waits.last().unwrap() < first(&plan, "apply the change"));
            // Nothing commits before the change ran (and, with 2PC, was prepared) everywhere.
            let first_commit = plan.iter().position(|s| s.drops).unwrap();
            let ready = if two_phase {
                "prepare the change"
            } else {
                "apply the change"
            };
            assert!(last(&plan, ready) < first_commit);
            // Every step before the first commit can be undone; every one after is a commit.
            assert!(plan[..first_commit]
                .iter()
                .filter(|s| !matches!(s.action, Action::CatchUp(_)))
                .all(|s| s.undo.is_some()));
            assert!(plan[first_commit..].iter().all(|s| s.drops));
            assert_eq!(plan.len() - first_commit, 3);
        }
    }

    #[test]
    fn a_change_that_removes_nothing_runs_at_once() {
        let plan = ddl_plan(&mesh(true), &CHANGE, &[]);
        assert_eq!(
            plan.iter()
                .map(|s| (s.node, s.name.as_str()))
                .collect::<Vec<_>>(),
            [1, 2, 3]
                .iter()
                .map(|&n| (n, "apply the change"))
                .chain([1, 2, 3].iter().map(|&n| (n, "prepare the change")))
                .chain([1, 2, 3].iter().map(|&n| (n, "commit the change")))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn values_are_quoted_once() {
        let change = DdlChange {
            command: "ALTER TABLE \"it's\" ADD COLUMN c text DEFAULT 'a'",
            ..CHANGE
        };
        let plan = ddl_plan(&mesh(true), &change, &[]);
        let Action::Exec(remote) = &plan[0].action else {
            panic!()
        };
        assert!(remote.query);
        assert!(remote
            .sql
            .contains("'ALTER TABLE \"it''s\" ADD COLUMN c text DEFAULT ''a'''"));
        assert!(remote.sql.contains("'public', 1, '1-42')"));
        assert!(remote.sql.contains("lock_timeout = '5000ms'"));
        let Action::Exec(prepare) = &plan[3].action else {
            panic!()
        };
        assert_eq!(prepare.sql, "PREPARE TRANSACTION 'mm_conflict_ddl_1-42'");
    }

    #[test]
    fn restrictions_and_their_undo() {
        let mut r = restriction();
        assert_eq!(
            r[0].restrict(),
            "ALTER PUBLICATION \"mm_conflict\" DROP TABLE \"public\".\"t\"; \
             ALTER PUBLICATION \"mm_conflict\" ADD TABLE \"public\".\"t\" (\"id\", \"mm_nodeid\")"
        );
        assert!(r[0].restore().ends_with("ADD TABLE \"public\".\"t\""));
        r[0].keep = None;
        assert_eq!(
            r[0].restrict(),
            "ALTER PUBLICATION \"mm_conflict\" DROP TABLE \"public\".\"t\""
        );
        assert_eq!(
            r[0].restore(),
            "ALTER PUBLICATION \"mm_conflict\" ADD TABLE \"public\".\"t\""
        );
    }

    #[test]
    fn two_phase_only_when_every_node_allows_it() {
        let mut nodes = mesh(true);
        assert!(two_phase(&nodes));
        nodes[1].1.two_phase = false;
        assert!(!two_phase(&nodes));
        let plan = ddl_plan(&nodes, &CHANGE, &[]);
        assert!(!plan.iter().any(|s| s.name == "prepare the change"));
    }

    #[test]
    fn a_missing_subscription_is_found() {
        let mut nodes = mesh(true);
        assert_eq!(check_full_mesh(&nodes), Ok(()));
        nodes[2]
            .1
            .subscriptions
            .retain(|s| *s != channel_name(2, 3));
        assert_eq!(check_full_mesh(&nodes), Err((3, 2)));
        // Node 4 sends to node 2 only: node 1 (the first that does not receive from it) is named.
        let mut nodes = mesh(true);
        nodes[0].1.subscriptions.push(channel_name(4, 2));
        assert_eq!(check_full_mesh(&nodes), Err((1, 4)));
    }
}
