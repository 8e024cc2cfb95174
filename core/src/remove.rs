//! The plan of `mm_conflict.remove_node`: from what every survivor said ([`survivor_query`],
//! read as [`SurvivorState`]) to the steps that take node `target` out of the mesh
//! ([`removal_plan`]).
//!
//! The order is what keeps rows: every survivor first stops receiving from the target and waits
//! until its apply worker from it has stopped; then each survivor waits until every other one has
//! confirmed all the WAL it had written by then (`mm_conflict._wait_for_peers`), which includes
//! every change it had applied from the target (the mesh relays them: publications send changes
//! of every origin). Only then is anything dropped: the target's own subscriptions first (when it
//! can be reached), the survivors' subscriptions from it, their slots it read and their `peer`
//! rows, and last the target's side of the mesh (`drop_mesh(false)` there, which leaves it a
//! standalone database with its rows). Until the first drop, each step has an undo.

use serde::Deserialize;

use crate::mesh::{as_block, channel_name, Remote};
use crate::sql::{sql_ident, sql_literal};

/// The query `remove_node` runs on survivor `survivor` before changing anything; its one value
/// is a JSON object read as [`SurvivorState`]. `me` is the node the call runs on (the survivor's
/// subscription from it tells how to reach it).
pub fn survivor_query(target: i64, survivor: i64, me: i64) -> String {
    let this_database =
        "(SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())";
    format!(
        "SELECT pg_catalog.json_build_object(
            'node_id', (SELECT node_id FROM mm_conflict.node),
            'receiving', (SELECT subenabled FROM pg_catalog.pg_subscription
                           WHERE subname = {from_target} AND subdbid = {this_database}),
            'slot', EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots
                             WHERE slot_name = {to_target} AND database = pg_catalog.current_database()),
            'peer', EXISTS (SELECT 1 FROM mm_conflict.peer WHERE node_id = {target}),
            'conninfo_of_caller', (SELECT subconninfo FROM pg_catalog.pg_subscription
                                    WHERE subname = {from_me} AND subdbid = {this_database}))::pg_catalog.text",
        from_target = sql_literal(&channel_name(target, survivor)),
        to_target = sql_literal(&channel_name(survivor, target)),
        from_me = sql_literal(&channel_name(me, survivor)),
    )
}

/// A survivor as `remove_node` found it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct SurvivorState {
    /// Its node id (`None`: it has none).
    pub node_id: Option<i64>,
    /// Its subscription from the target: `Some(enabled)`, `None` when there is none.
    pub receiving: Option<bool>,
    /// Whether the slot through which the target read from it exists.
    pub slot: bool,
    /// Whether its `mm_conflict.peer` lists the target.
    pub peer: bool,
    /// The conninfo of its subscription from the calling node (how the call reaches its own node).
    #[serde(default)]
    pub conninfo_of_caller: Option<String>,
}

impl SurvivorState {
    /// Whether anything on it still serves the target.
    pub fn serves_target(&self) -> bool {
        self.receiving.is_some() || self.slot || self.peer
    }
}

/// What a step does on its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// A command, committed there on its own.
    Exec(Remote),
    /// A query run again and again until it returns true (or the call's time is up).
    Until(Remote),
    /// Waits until every one of these nodes has confirmed all the WAL this node had written when
    /// the step began (`mm_conflict._wait_for_peers`, with what is left of the call's time).
    CatchUp(Vec<i64>),
    /// Drops this replication slot there, ending the walsender that holds it.
    DropSlot(String),
}

/// One step of `remove_node`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemovalStep {
    /// The node it runs on.
    pub node: i64,
    /// What it does, for messages ("stop receiving from node 3").
    pub name: String,
    pub action: Action,
    /// What undoes it on the same node (only steps before the first drop have one).
    pub undo: Option<Remote>,
    /// Whether it is a step after which the removal cannot be undone.
    pub drops: bool,
}

/// `ALTER SUBSCRIPTION ... DISABLE; ... SET (slot_name = NONE); DROP SUBSCRIPTION ...` for
/// subscription `channel` when it exists: transactional, and the slot it read stays where it is.
fn drop_subscription(channel: &str) -> String {
    let ident = sql_ident(channel);
    format!(
        "IF EXISTS (SELECT 1 FROM pg_catalog.pg_subscription WHERE subname = {literal} \
         AND subdbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())) THEN \
         ALTER SUBSCRIPTION {ident} DISABLE; ALTER SUBSCRIPTION {ident} SET (slot_name = NONE); \
         DROP SUBSCRIPTION {ident}; END IF",
        literal = sql_literal(channel),
    )
}

/// `remove_node`'s plan for taking node `target` out of the mesh. `survivors` are the nodes that
/// stay and were reached, with what each said; `target_reached` whether the target itself was.
pub fn removal_plan(
    target: i64,
    survivors: &[(i64, SurvivorState)],
    target_reached: bool,
) -> Vec<RemovalStep> {
    let mut steps = Vec::new();
    // A lone survivor has no one to wait for: what it received it keeps.
    let catch_up = survivors.len() > 1;
    // 1. Nothing more from the target: every survivor stops receiving from it...
    for (node, state) in survivors {
        if catch_up && state.receiving == Some(true) {
            let ident = sql_ident(&channel_name(target, *node));
            steps.push(RemovalStep {
                node: *node,
                name: format!("stop receiving from node {target}"),
                action: Action::Exec(Remote::exec(format!("ALTER SUBSCRIPTION {ident} DISABLE"))),
                undo: Some(Remote::exec(format!("ALTER SUBSCRIPTION {ident} ENABLE"))),
                drops: false,
            });
        }
    }
    // ... and waits until its workers from it have stopped (a worker ends the transaction it is
    // applying before it sees the subscription disabled).
    for (node, state) in survivors {
        if catch_up && state.receiving.is_some() {
            steps.push(RemovalStep {
                node: *node,
                name: format!("wait for the apply worker from node {target} to stop"),
                action: Action::Until(Remote::query(format!(
                    "SELECT NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_subscription \
                     WHERE subname = {} AND pid IS NOT NULL)",
                    sql_literal(&channel_name(target, *node))
                ))),
                undo: None,
                drops: false,
            });
        }
    }
    // 2. Every survivor has what any of them received from the target.
    if catch_up {
        for (node, _) in survivors {
            let others: Vec<i64> = survivors
                .iter()
                .map(|(n, _)| *n)
                .filter(|n| n != node)
                .collect();
            steps.push(RemovalStep {
                node: *node,
                name: format!(
                    "wait until nodes {} have what node {node} has",
                    others
                        .iter()
                        .map(i64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                action: Action::CatchUp(others),
                undo: None,
                drops: false,
            });
        }
    }
    // 3. The target stops reading from the survivors (its walsenders there then end)...
    if target_reached {
        let statements: Vec<String> = survivors
            .iter()
            .map(|(node, _)| drop_subscription(&channel_name(*node, target)))
            .collect();
        if !statements.is_empty() {
            steps.push(RemovalStep {
                node: target,
                name: "drop its subscriptions from the survivors".into(),
                action: Action::Exec(Remote::exec(as_block(&statements))),
                undo: None,
                drops: true,
            });
        }
    }
    // ... every survivor drops what served the target...
    for (node, state) in survivors {
        if state.receiving.is_some() || state.peer {
            steps.push(RemovalStep {
                node: *node,
                name: format!("drop its subscription from node {target}"),
                action: Action::Exec(Remote::exec(as_block(&[
                    drop_subscription(&channel_name(target, *node)),
                    format!("DELETE FROM mm_conflict.peer WHERE node_id = {target}"),
                ]))),
                undo: None,
                drops: true,
            });
        }
        if state.slot {
            steps.push(RemovalStep {
                node: *node,
                name: format!("drop the slot node {target} read"),
                action: Action::DropSlot(channel_name(*node, target)),
                undo: None,
                drops: true,
            });
        }
    }
    // ... and the target leaves the mesh with its rows (its slots, publication and triggers go).
    if target_reached {
        steps.push(RemovalStep {
            node: target,
            name: "leave the mesh (drop_mesh there)".into(),
            action: Action::Exec(Remote::query(
                "SELECT mm_conflict.drop_mesh(false)::pg_catalog.text".into(),
            )),
            undo: None,
            drops: true,
        });
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(receiving: Option<bool>) -> SurvivorState {
        SurvivorState {
            receiving,
            slot: true,
            peer: true,
            ..SurvivorState::default()
        }
    }

    #[test]
    fn stops_then_catches_up_then_drops() {
        let survivors = [
            (1, state(Some(true))),
            (2, state(Some(false))),
            (4, state(None)),
        ];
        let steps = removal_plan(3, &survivors, true);
        let first_drop = steps.iter().position(|s| s.drops).unwrap();
        assert!(steps[..first_drop].iter().all(|s| !s.drops));
        assert!(steps[first_drop..]
            .iter()
            .all(|s| s.drops && s.undo.is_none()));
        // Only the enabled subscription is disabled, and that is undone on failure.
        let stops: Vec<_> = steps.iter().filter(|s| s.undo.is_some()).collect();
        assert_eq!(stops.len(), 1);
        assert_eq!(
            stops[0].action,
            Action::Exec(Remote::exec(
                "ALTER SUBSCRIPTION \"mm_conflict_3_to_1\" DISABLE".into()
            ))
        );
        // Every survivor waits for every other one, after every worker stopped.
        let last_until = steps
            .iter()
            .rposition(|s| matches!(s.action, Action::Until(_)))
            .unwrap();
        let catch_ups: Vec<(usize, &RemovalStep)> = steps
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s.action, Action::CatchUp(_)))
            .collect();
        assert_eq!(catch_ups.len(), 3);
        assert!(catch_ups
            .iter()
            .all(|(k, _)| *k > last_until && *k < first_drop));
        assert_eq!(catch_ups[0].1.action, Action::CatchUp(vec![2, 4]));
        // The target drops its subscriptions before the survivors drop the slots it reads.
        assert_eq!(steps[first_drop].node, 3);
        assert!(
            matches!(steps.last().unwrap().action, Action::Exec(ref r) if r.sql.contains("drop_mesh(false)"))
        );
        let slots: Vec<&Action> = steps
            .iter()
            .map(|s| &s.action)
            .filter(|a| matches!(a, Action::DropSlot(_)))
            .collect();
        assert_eq!(slots.len(), 3);
        assert_eq!(*slots[0], Action::DropSlot("mm_conflict_1_to_3".into()));
    }

    #[test]
    fn an_unreached_target_and_a_lone_survivor() {
        let steps = removal_plan(2, &[(1, state(Some(true)))], false);
        assert!(steps.iter().all(|s| s.node == 1 && s.drops));
        assert!(!steps
            .iter()
            .any(|s| matches!(s.action, Action::CatchUp(_) | Action::Until(_))));
        // Nothing left to do where nothing serves the target.
        let gone = SurvivorState::default();
        assert!(!gone.serves_target());
        assert!(removal_plan(2, &[(1, gone)], false).is_empty());
    }

    #[test]
    fn subscriptions_are_dropped_only_where_they_exist_and_keep_their_slot() {
        let sql = drop_subscription("mm_conflict_3_to_1");
        assert!(sql.starts_with("IF EXISTS (SELECT 1 FROM pg_catalog.pg_subscription WHERE subname = 'mm_conflict_3_to_1'"));
        assert!(sql.contains("SET (slot_name = NONE)"));
        let query = survivor_query(3, 1, 2);
        assert!(query.contains("'mm_conflict_3_to_1'") && query.contains("'mm_conflict_1_to_3'"));
        assert!(query.contains("'mm_conflict_2_to_1'"));
    }
}
