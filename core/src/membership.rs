//! The plans of a mesh's membership changes: `mm_conflict.remove_node` ([`removal_plan`]),
//! `mm_conflict.add_node` ([`add_plan`]) and `mm_conflict.drop_mesh` ([`drop_plan`]), from what every node said ([`survivor_query`], read as
//! [`SurvivorState`]) to the steps, each on one node.
//!
//! Removal: the order is what keeps rows: every survivor first stops receiving from the target and waits
//! until its apply worker from it has stopped; then each survivor waits until every other one has
//! confirmed all the WAL it had written by then (`mm_conflict._wait_for_peers`), which includes
//! every change it had applied from the target (the mesh relays them: publications send changes
//! of every origin). Only then is anything dropped: the target's own subscriptions first (when it
//! can be reached), the survivors' subscriptions from it, their slots it read and their `peer`
//! rows, and last the target's side of the mesh (`drop_mesh(false)` there, which leaves it a
//! standalone database with its rows). Until the first drop, each step has an undo.

use serde::Deserialize;

use crate::mesh::{
    as_block, channel_name, node_setup, NodeSpec, NodeState, Remote, TablePolicy, THIS_DATABASE,
};
use crate::sql::{sql_ident, sql_literal};

/// The query `remove_node` runs on survivor `survivor` before changing anything; its one value
/// is a JSON object read as [`SurvivorState`]. `me` is the node the call runs on (the survivor's
/// subscription from it tells how to reach it).
pub fn survivor_query(target: i64, survivor: i64, me: i64) -> String {
    format!(
        "SELECT pg_catalog.json_build_object(
            'node_id', (SELECT node_id FROM mm_conflict.node),
            'receiving', (SELECT subenabled FROM pg_catalog.pg_subscription
                           WHERE subname = {from_target} AND subdbid = {THIS_DATABASE}),
            'slot', EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots
                             WHERE slot_name = {to_target} AND database = pg_catalog.current_database()),
            'peer', EXISTS (SELECT 1 FROM mm_conflict.peer WHERE node_id = {target}),
            'conninfo_of_caller', {from_me})::pg_catalog.text",
        from_target = sql_literal(&channel_name(target, survivor)),
        to_target = sql_literal(&channel_name(survivor, target)),
        from_me = subscription_conninfo(me, survivor),
    )
}

/// The conninfo of node `subscriber`'s subscription from node `publisher` (NULL: it has none),
/// as a scalar subquery run on `subscriber`.
pub(crate) fn subscription_conninfo(publisher: i64, subscriber: i64) -> String {
    format!(
        "(SELECT subconninfo FROM pg_catalog.pg_subscription WHERE subname = {} AND subdbid = {THIS_DATABASE})",
        sql_literal(&channel_name(publisher, subscriber))
    )
}

/// The query whose one value is [`subscription_conninfo`], for a node that may lack the
/// extension (`add_node`'s new node: one that comes back tells how it reached the caller).
pub fn conninfo_query(publisher: i64, subscriber: i64) -> String {
    format!("SELECT {}", subscription_conninfo(publisher, subscriber))
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
pub struct MemberStep {
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

/// [`drop_subscription`] as a statement of its own (a `DO` block).
pub fn drop_subscription_block(channel: &str) -> String {
    as_block(&[drop_subscription(channel)])
}

/// `ALTER SUBSCRIPTION ... DISABLE; ... SET (slot_name = NONE); DROP SUBSCRIPTION ...` for
/// subscription `channel` when it exists: transactional, and the slot it read stays where it is.
fn drop_subscription(channel: &str) -> String {
    let ident = sql_ident(channel);
    format!(
        "IF EXISTS (SELECT 1 FROM pg_catalog.pg_subscription WHERE subname = {literal} \
         AND subdbid = {THIS_DATABASE}) THEN \
         ALTER SUBSCRIPTION {ident} DISABLE; ALTER SUBSCRIPTION {ident} SET (slot_name = NONE); \
         DROP SUBSCRIPTION {ident}; END IF",
        literal = sql_literal(channel),
    )
}

/// `add_node`'s plan for bringing node `new` (found as `state`) into the mesh of `members` (every
/// node of it, with its conninfo and what it said of `new`), copying the rows from `copy_from`,
/// each table with its policy. README "Add a node", in its order: the new node is set up (for a
/// node that comes back, its subscriptions from before go: their slots may be lost); every member
/// subscribes to it; it subscribes to every member but `copy_from` without copying, then to
/// `copy_from` with the copy, which goes through the trigger (rows keep their versions, tombstones
/// come along); a change committed on a member before the new node's slot there existed is in
/// `copy_from`'s copy or reaches `copy_from` later and is relayed. The call waits for the copy;
/// a node that comes back then repairs every table, for its own changes that never left it.
pub fn add_plan(
    new: &NodeSpec,
    state: &NodeState,
    members: &[(i64, String, SurvivorState)],
    copy_from: i64,
    tables: &[(String, TablePolicy)],
) -> Vec<MemberStep> {
    let mut steps = Vec::new();
    let returning = state.extension && state.node_id == Some(new.id);
    let subscribe = |node: i64, peer: i64, conninfo: &str, copy: bool| MemberStep {
        node,
        name: format!(
            "subscribe to node {peer}{}",
            if copy { ", copying its rows" } else { "" }
        ),
        action: Action::Exec(Remote::exec(as_block(&[format!(
            "PERFORM mm_conflict.subscribe({peer}, {}, {copy})",
            sql_literal(conninfo)
        )]))),
        undo: Some(Remote::query(format!(
            "SELECT mm_conflict._unsubscribe({peer})"
        ))),
        drops: false,
    };
    // 1. The new node: extension, id, tables; a node coming back loses its old subscriptions.
    let (mut statements, undo) = node_setup(new, state, tables);
    for (member, _, _) in members {
        let channel = channel_name(*member, new.id);
        if state.subscriptions.contains(&channel) {
            statements.push(drop_subscription(&channel));
        }
    }
    steps.push(MemberStep {
        node: new.id,
        name: "install the extension, node_init, replicate_table".into(),
        action: Action::Exec(Remote::exec(as_block(&statements))),
        undo: (!undo.is_empty()).then(|| Remote::exec(as_block(&undo))),
        drops: false,
    });
    // 2. Slots through which it read before: its new subscriptions start afresh.
    for (member, _, seen) in members {
        if seen.slot {
            steps.push(MemberStep {
                node: *member,
                name: format!("drop the slot node {} read before", new.id),
                action: Action::DropSlot(channel_name(*member, new.id)),
                undo: None,
                drops: false,
            });
        }
    }
    // 3. Every member subscribes to it; 4. it subscribes to every member, copying from one.
    for (member, _, seen) in members {
        if seen.receiving.is_none() {
            steps.push(subscribe(*member, new.id, &new.conninfo, false));
        }
    }
    for (member, conninfo, _) in members.iter().filter(|(m, _, _)| *m != copy_from) {
        steps.push(subscribe(new.id, *member, conninfo, false));
    }
    if let Some((_, conninfo, _)) = members.iter().find(|(m, _, _)| *m == copy_from) {
        steps.push(subscribe(new.id, copy_from, conninfo, true));
    }
    // 5. The copy ends; 6. a node that comes back repairs what the copy cannot.
    steps.push(MemberStep {
        node: new.id,
        name: format!("wait for the copy from node {copy_from}"),
        action: Action::Until(Remote::query(format!(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_catalog.pg_subscription_rel r              JOIN pg_catalog.pg_subscription s ON s.oid = r.srsubid              WHERE s.subname = {} AND r.srsubstate <> 'r')",
            sql_literal(&channel_name(copy_from, new.id))
        ))),
        undo: None,
        drops: false,
    });
    if returning {
        for (table, _) in tables {
            steps.push(MemberStep {
                node: new.id,
                name: format!("repair {table}"),
                action: Action::Exec(Remote::query(format!(
                    "SELECT mm_conflict.repair({})::pg_catalog.text",
                    sql_literal(table)
                ))),
                undo: None,
                drops: false,
            });
        }
    }
    steps
}

/// A query whose one value is the JSON array of the problems the `text[]` function `call`
/// returned (what `drop_mesh`'s steps report instead of failing).
fn problems_of(call: &str) -> Remote {
    Remote::query(format!(
        "SELECT pg_catalog.array_to_json({call})::pg_catalog.text"
    ))
}

/// `drop_mesh`'s plan on node `me`, with `tables` its replicated tables: with `peers` (the ones
/// `everywhere` reached), first every node's subscriptions go (so that none is left pointing at
/// a publication already dropped), then each peer drops the rest of its side (`drop_mesh(false)`
/// there), then this node: its publication, its tables' triggers and tombstones, the peers'
/// slots here (nothing reads them any more, and they would keep WAL), its id. The steps on peers
/// report what they could not do instead of failing.
pub fn drop_plan(me: i64, peers: &[i64], tables: &[String]) -> Vec<MemberStep> {
    let step = |node: i64, name: &str, remote: Remote| MemberStep {
        node,
        name: name.into(),
        action: Action::Exec(remote),
        undo: None,
        drops: true,
    };
    let mut steps = Vec::new();
    for &peer in peers.iter().chain([me].iter()) {
        steps.push(step(
            peer,
            "drop its subscriptions",
            problems_of("mm_conflict._unsubscribe_all()"),
        ));
    }
    for &peer in peers {
        steps.push(step(
            peer,
            "leave the mesh (drop_mesh there)",
            Remote::query("SELECT mm_conflict.drop_mesh(false)::pg_catalog.text".into()),
        ));
    }
    // The publication first: unreplicate_table refuses a table still published while this node
    // has subscriptions (a mesh set up by hand keeps its own).
    let mut statements = vec![format!(
        "DROP PUBLICATION IF EXISTS {}",
        sql_ident(crate::mesh::PUBLICATION)
    )];
    statements.extend(
        tables
            .iter()
            .map(|t| format!("PERFORM mm_conflict.unreplicate_table({})", sql_literal(t))),
    );
    steps.push(step(
        me,
        "drop the publication and the tables' triggers",
        Remote::exec(as_block(&statements)),
    ));
    steps.push(step(
        me,
        "drop the peers' slots",
        problems_of(&format!(
            "mm_conflict._drop_local_slots({me}::pg_catalog.int2)"
        )),
    ));
    steps.push(step(
        me,
        "forget the node id",
        Remote::exec("DELETE FROM mm_conflict.node".into()),
    ));
    steps
}

/// `remove_node`'s plan for taking node `target` out of the mesh. `survivors` are the nodes that
/// stay and were reached, with what each said; `target_reached` whether the target itself was.
pub fn removal_plan(
    target: i64,
    survivors: &[(i64, SurvivorState)],
    target_reached: bool,
) -> Vec<MemberStep> {
    let mut steps = Vec::new();
    // A lone survivor has no one to wait for: what it received it keeps.
    let catch_up = survivors.len() > 1;
    // 1. Nothing more from the target: every survivor stops receiving from it...
    for (node, state) in survivors {
        if catch_up && state.receiving == Some(true) {
            let ident = sql_ident(&channel_name(target, *node));
            steps.push(MemberStep {
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
            steps.push(MemberStep {
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
            steps.push(MemberStep {
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
            steps.push(MemberStep {
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
            steps.push(MemberStep {
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
            steps.push(MemberStep {
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
        steps.push(MemberStep {
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

    #[test]
    fn drop_mesh_unsubscribes_everywhere_before_anything_else() {
        let steps = drop_plan(1, &[2, 3], &["public.mm".into()]);
        let names: Vec<(i64, &str)> = steps.iter().map(|s| (s.node, s.name.as_str())).collect();
        assert_eq!(
            names,
            vec![
                (2, "drop its subscriptions"),
                (3, "drop its subscriptions"),
                (1, "drop its subscriptions"),
                (2, "leave the mesh (drop_mesh there)"),
                (3, "leave the mesh (drop_mesh there)"),
                (1, "drop the publication and the tables' triggers"),
                (1, "drop the peers' slots"),
                (1, "forget the node id"),
            ]
        );
        let Action::Exec(tables) = &steps[5].action else {
            panic!()
        };
        assert_eq!(
            tables.sql,
            "DO $mm$BEGIN DROP PUBLICATION IF EXISTS \"mm_conflict\"; PERFORM mm_conflict.unreplicate_table('public.mm'); END$mm$"
        );
        assert_eq!(drop_plan(1, &[], &[]).len(), 4);
    }

    #[test]
    fn a_new_node_is_set_up_subscribed_both_ways_and_copies_last() {
        let new = NodeSpec {
            id: 4,
            name: Some("d".into()),
            conninfo: "host=d".into(),
        };
        let fresh = crate::mesh::tests::fresh();
        let members: Vec<(i64, String, SurvivorState)> = (1..=3)
            .map(|m| (m, format!("host=n{m}"), SurvivorState::default()))
            .collect();
        let policy = TablePolicy {
            criterion: "last_xacttime".into(),
            method: "last".into(),
            preferred_node: Some(2),
            delta_columns: Vec::new(),
        };
        let steps = add_plan(
            &new,
            &fresh,
            &members,
            1,
            &[("public.mm".into(), policy.clone())],
        );
        let names: Vec<(i64, &str)> = steps.iter().map(|s| (s.node, s.name.as_str())).collect();
        assert_eq!(
            names,
            vec![
                (4, "install the extension, node_init, replicate_table"),
                (1, "subscribe to node 4"),
                (2, "subscribe to node 4"),
                (3, "subscribe to node 4"),
                (4, "subscribe to node 2"),
                (4, "subscribe to node 3"),
                (4, "subscribe to node 1, copying its rows"),
                (4, "wait for the copy from node 1"),
            ]
        );
        assert_eq!(
            steps[0].undo,
            Some(Remote::exec(
                "DO $mm$BEGIN DROP EXTENSION mm_conflict; END$mm$".into()
            ))
        );
        assert!(
            matches!(&steps[6].action, Action::Exec(r) if r.sql.contains("subscribe(1, 'host=n1', true)"))
        );
        // A node that comes back: its old subscriptions and the slots they read go, every table is
        // repaired after the copy; a member that still receives from it keeps that.
        let back = NodeState {
            extension: true,
            node_id: Some(4),
            replicated: vec!["public.mm".into()],
            publication: true,
            subscriptions: vec![channel_name(1, 4), channel_name(2, 4)],
            ..fresh
        };
        let mut members = members;
        members[0].2 = SurvivorState {
            receiving: Some(true),
            slot: true,
            ..SurvivorState::default()
        };
        let steps = add_plan(&new, &back, &members, 2, &[("public.mm".into(), policy)]);
        let Action::Exec(setup) = &steps[0].action else {
            panic!()
        };
        assert!(
            setup
                .sql
                .contains("DROP SUBSCRIPTION \"mm_conflict_1_to_4\"")
                && setup.sql.contains("mm_conflict_2_to_4")
        );
        assert_eq!(steps[0].undo, None);
        assert_eq!(
            steps[1].action,
            Action::DropSlot("mm_conflict_1_to_4".into())
        );
        assert!(!steps
            .iter()
            .any(|s| s.node == 1 && s.name == "subscribe to node 4"));
        assert_eq!(steps.last().unwrap().name, "repair public.mm");
    }

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
        let catch_ups: Vec<(usize, &MemberStep)> = steps
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
