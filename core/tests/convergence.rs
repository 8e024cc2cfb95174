//! Property test: N simulated replicas running the core's rules converge.
//!
//! The model follows PostgreSQL 15 native logical replication in a full mesh:
//! * every node publishes every transaction it writes, local or applied from a peer (PG15 has no
//!   `origin = none`), to each peer over its own FIFO path, with the changes it actually made;
//! * a replicated UPDATE or DELETE for a key the node does not have is skipped without firing a
//!   trigger;
//! * a local DELETE writes a tombstone (a versioned delete) in the same transaction, before the
//!   row's DELETE; a node that keeps its row against a tombstone that is new there re-sends the
//!   row as DELETE + INSERT;
//! * paths deliver in any interleaving, and a transaction may be delivered twice (a worker restart
//!   replays from the last flushed position).
//!
//! After all paths drain, every replica must hold the same rows, each key must be in the state of
//! the best version ever written for it (a row, or absent when that is a tombstone), and no local
//! `last`-mode write on an automatic criterion may have been refused.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use mm_conflict_core::decide::{self, DeleteAction, InsertAction, LocalAction, LocalConflictMode};
use mm_conflict_core::stamp::{stamp_above_all, stamp_local, Clock};
use mm_conflict_core::{Criterion, Direction, Policy, RowStamps, Version};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Row {
    stamps: RowStamps,
    /// Identifies the write that produced this row.
    write_id: u32,
}

#[derive(Clone, Copy, Debug)]
enum Change {
    Insert(u8, Row),
    Update(u8, Row),
    Delete(u8),
    Tombstone(u8, Version),
}

type Txn = Vec<Change>;

#[derive(Clone, Debug)]
enum Step {
    /// Node, key, user criterion value (used by `Criterion::Column` policies).
    Write(usize, u8, i64),
    Delete(usize, u8),
    /// From, to (indexes into the peer list), duplicate?
    Deliver(usize, usize, bool),
}

#[derive(Clone, Default)]
struct Replica {
    rows: BTreeMap<u8, Row>,
    tombstones: BTreeMap<u8, Version>,
}

/// The best version ever written for a key: a row or a tombstone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Written {
    Row(Row),
    Tombstone(Version),
}

struct Mesh {
    policy: Policy,
    nodes: Vec<Replica>,
    /// paths[from][to]
    paths: Vec<Vec<VecDeque<Txn>>>,
    skew: Vec<i64>,
    tick: i64,
    next_write: u32,
    written: BTreeMap<u8, Vec<Written>>,
}

impl Mesh {
    fn new(policy: Policy, skew: Vec<i64>) -> Mesh {
        let n = skew.len();
        Mesh {
            policy,
            nodes: vec![Replica::default(); n],
            paths: vec![vec![VecDeque::new(); n]; n],
            skew,
            tick: 0,
            next_write: 0,
            written: BTreeMap::new(),
        }
    }

    fn version(&self, row: &Row) -> Version {
        self.policy.version(&row.stamps)
    }

    fn written_version(&self, w: &Written) -> Version {
        match w {
            Written::Row(r) => self.version(r),
            Written::Tombstone(t) => *t,
        }
    }

    fn publish(&mut self, from: usize, txn: Txn) {
        if txn.is_empty() {
            return;
        }
        for to in 0..self.nodes.len() {
            if to != from {
                self.paths[from][to].push_back(txn.clone());
            }
        }
    }

    fn clock(&mut self, node: usize) -> Clock {
        self.tick += 10;
        Clock {
            xact_start: self.tick + self.skew[node],
            wall: self.tick + self.skew[node] + 3,
        }
    }

    fn automatic(&self) -> bool {
        matches!(
            self.policy.criterion,
            Criterion::LastXactTime | Criterion::LastStatTime
        ) && self.policy.direction == Direction::Last
    }

    fn local_write(&mut self, node: usize, key: u8, user_value: i64) {
        let clock = self.clock(node);
        let stored = self.nodes[node].rows.get(&key).copied();
        let tombstone = self.nodes[node].tombstones.get(&key).copied();
        let tombstone_stamps = tombstone.map(|t| RowStamps {
            xacttime: t.criterion,
            stattime: t.stattime,
            ..RowStamps::default()
        });
        let stamps = stamp_above_all(
            clock,
            &[
                stored.as_ref().map(|r| &r.stamps),
                tombstone_stamps.as_ref(),
            ],
        );
        self.next_write += 1;
        let row = Row {
            stamps: RowStamps {
                xacttime: Some(stamps.xacttime),
                stattime: Some(stamps.stattime),
                node: Some(node as i16 + 1),
                user_criterion: Some(user_value),
            },
            write_id: self.next_write,
        };
        // A local write must beat what it replaces: the row, or else the key's tombstone.
        let replaced = stored.map(|r| self.version(&r)).or(tombstone);
        if let Some(replaced) = replaced {
            let action = decide::local_write(
                &self.policy.order(),
                &replaced,
                &self.version(&row),
                LocalConflictMode::Error,
            );
            if self.automatic() {
                assert_eq!(
                    action,
                    LocalAction::Write,
                    "a local last-mode write was refused"
                );
            }
            if action != LocalAction::Write {
                return;
            }
        }
        self.nodes[node].rows.insert(key, row);
        self.written.entry(key).or_default().push(Written::Row(row));
        let change = if stored.is_some() {
            Change::Update(key, row)
        } else {
            Change::Insert(key, row)
        };
        self.publish(node, vec![change]);
    }

    fn local_delete(&mut self, node: usize, key: u8) {
        let Some(old) = self.nodes[node].rows.get(&key).copied() else {
            return;
        };
        let clock = self.clock(node);
        let stamps = stamp_local(clock, Some(&old.stamps));
        let mut policy = self.policy.clone();
        policy.node_id = node as i16 + 1;
        let tombstone = policy.tombstone_version(&old.stamps, &stamps);
        let action = decide::local_write(
            &self.policy.order(),
            &self.version(&old),
            &tombstone,
            LocalConflictMode::Error,
        );
        if self.automatic() {
            assert_eq!(
                action,
                LocalAction::Write,
                "a local last-mode delete was refused"
            );
        }
        if action != LocalAction::Write {
            return;
        }
        let replica = &mut self.nodes[node];
        replica.rows.remove(&key);
        replica.tombstones.insert(key, tombstone);
        self.written
            .entry(key)
            .or_default()
            .push(Written::Tombstone(tombstone));
        self.publish(
            node,
            vec![Change::Tombstone(key, tombstone), Change::Delete(key)],
        );
    }

    /// Applies one transaction at `to` and returns what `to` publishes in turn.
    fn apply(&mut self, to: usize, txn: &Txn) -> Txn {
        let order = self.policy.order();
        let mut out = Vec::new();
        for change in txn {
            match *change {
                Change::Tombstone(key, t) => {
                    let wins = self.nodes[to]
                        .tombstones
                        .get(&key)
                        .is_none_or(|old| order.beats(&t, old));
                    if !wins {
                        continue;
                    }
                    self.nodes[to].tombstones.insert(key, t);
                    out.push(Change::Tombstone(key, t));
                    // A new tombstone settles the row here and now: a relay that had no row
                    // forwards the tombstone without the DELETE, so the DELETE cannot be relied on.
                    let Some(row) = self.nodes[to].rows.get(&key).copied() else {
                        continue;
                    };
                    match decide::new_tombstone(&order, &self.version(&row), &t) {
                        DeleteAction::Delete => {
                            self.nodes[to].rows.remove(&key);
                            out.push(Change::Delete(key));
                        }
                        DeleteAction::KeepAndResend => {
                            out.push(Change::Delete(key));
                            out.push(Change::Insert(key, row));
                        }
                        DeleteAction::Keep => {}
                    }
                }
                Change::Delete(key) => {
                    // PostgreSQL skips a DELETE of a missing row without firing any trigger.
                    let Some(row) = self.nodes[to].rows.get(&key).copied() else {
                        continue;
                    };
                    let tombstone = self.nodes[to].tombstones.get(&key).copied();
                    if decide::replicated_delete(&order, &self.version(&row), tombstone.as_ref())
                        == DeleteAction::Delete
                    {
                        self.nodes[to].rows.remove(&key);
                        out.push(Change::Delete(key));
                    }
                }
                Change::Insert(key, row) => {
                    let stored = self.nodes[to].rows.get(&key).map(|r| self.version(r));
                    let tombstone = self.nodes[to].tombstones.get(&key).copied();
                    match decide::replicated_insert(
                        &order,
                        stored.as_ref(),
                        tombstone.as_ref(),
                        &self.version(&row),
                    ) {
                        InsertAction::Insert => {
                            self.nodes[to].rows.insert(key, row);
                            out.push(Change::Insert(key, row));
                        }
                        InsertAction::ConvertToUpdate => {
                            self.nodes[to].rows.insert(key, row);
                            out.push(Change::Update(key, row));
                        }
                        InsertAction::Skip(_) => {}
                    }
                }
                Change::Update(key, row) => {
                    // PostgreSQL skips an UPDATE of a missing row without firing any trigger.
                    let Some(stored) = self.nodes[to].rows.get(&key).copied() else {
                        continue;
                    };
                    if decide::resolve(&order, &self.version(&stored), &self.version(&row))
                        == decide::Outcome::IncomingWins
                    {
                        self.nodes[to].rows.insert(key, row);
                        out.push(Change::Update(key, row));
                    }
                }
            }
        }
        out
    }

    fn deliver(&mut self, from: usize, to: usize, duplicate: bool) {
        let txn = if duplicate {
            match self.paths[from][to].front() {
                Some(t) => t.clone(),
                None => return,
            }
        } else {
            match self.paths[from][to].pop_front() {
                Some(t) => t,
                None => return,
            }
        };
        let out = self.apply(to, &txn);
        self.publish(to, out);
    }

    fn drain(&mut self, mut pick: impl FnMut(usize) -> usize) {
        let n = self.nodes.len();
        let mut guard = 0u64;
        loop {
            let busy: Vec<(usize, usize)> = (0..n)
                .flat_map(|f| (0..n).map(move |t| (f, t)))
                .filter(|&(f, t)| !self.paths[f][t].is_empty())
                .collect();
            if busy.is_empty() {
                return;
            }
            let (f, t) = busy[pick(busy.len())];
            self.deliver(f, t, false);
            guard += 1;
            assert!(guard < 1_000_000, "the mesh never went quiet");
        }
    }

    fn check_converged(&self) {
        let order = self.policy.order();
        for (i, node) in self.nodes.iter().enumerate().skip(1) {
            assert_eq!(
                node.rows,
                self.nodes[0].rows,
                "node {} differs from node 1",
                i + 1
            );
        }
        for (key, versions) in &self.written {
            let best = versions
                .iter()
                .max_by(|a, b| order.compare(&self.written_version(a), &self.written_version(b)))
                .unwrap();
            let expected = match best {
                Written::Row(r) => Some(r),
                Written::Tombstone(_) => None,
            };
            assert_eq!(
                self.nodes[0].rows.get(key),
                expected,
                "key {key} is not in its best version's state"
            );
        }
    }
}

fn policy_strategy() -> impl Strategy<Value = Policy> {
    let criterion = prop_oneof![
        Just(Criterion::LastXactTime),
        Just(Criterion::LastStatTime),
        Just(Criterion::Column("mod_time".into())),
        (1i16..=4).prop_map(|winner| Criterion::NodeId { winner }),
    ];
    let direction = prop_oneof![Just(Direction::Last), Just(Direction::First)];
    (criterion, direction, proptest::option::of(1i16..=4)).prop_map(
        |(criterion, direction, preferred_node)| {
            let direction = if matches!(criterion, Criterion::NodeId { .. }) {
                Direction::Last
            } else {
                direction
            };
            Policy {
                node_id: 1,
                criterion,
                direction,
                preferred_node,
            }
        },
    )
}

fn steps_strategy(nodes: usize) -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        3 => (0..nodes, 0u8..5, 0i64..40).prop_map(|(n, k, v)| Step::Write(n, k, v)),
        1 => (0..nodes, 0u8..5).prop_map(|(n, k)| Step::Delete(n, k)),
        6 => (0..nodes, 1..nodes, proptest::bool::weighted(0.1))
            .prop_map(move |(f, d, dup)| Step::Deliver(f, (f + d) % nodes, dup)),
    ];
    proptest::collection::vec(step, 1..300)
}

fn scenario() -> impl Strategy<Value = (Policy, Vec<i64>, Vec<Step>, Vec<usize>)> {
    (2usize..=5).prop_flat_map(|n| {
        (
            policy_strategy(),
            proptest::collection::vec(-30i64..30, n),
            steps_strategy(n),
            proptest::collection::vec(0usize..1000, 64),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn replicas_converge_to_the_best_version((policy, skew, steps, drain_choices) in scenario()) {
        let mut mesh = Mesh::new(policy, skew);
        for step in steps {
            match step {
                Step::Write(n, k, v) => mesh.local_write(n, k, v),
                Step::Delete(n, k) => mesh.local_delete(n, k),
                Step::Deliver(f, t, dup) => mesh.deliver(f, t, dup),
            }
        }
        let mut i = 0;
        mesh.drain(|len| { i += 1; drain_choices[i % drain_choices.len()] % len });
        mesh.check_converged();
    }
}

/// The article's failure, replayed: node 2 applies node 1's INSERT and then updates the row; node 3
/// hears from node 2 first. Node 2's path carries its relayed copy of the INSERT, then its UPDATE.
/// The article drops the relayed copy, so the UPDATE finds no row on node 3 and is lost for good
/// once node 1's INSERT arrives. Resolving relayed copies by version keeps the update.
#[test]
fn update_before_insert_is_healed_by_relayed_copies() {
    let policy = Policy::parse(&["1", "last_xacttime", "last", "2"]).unwrap();
    let mut mesh = Mesh::new(policy, vec![0, 0, 0]);
    mesh.local_write(0, 7, 0); // node 1 inserts
    mesh.deliver(0, 1, false); // node 2 applies it (and relays it)
    mesh.local_write(1, 7, 0); // node 2 updates
    mesh.deliver(1, 2, false); // node 3: node 2's relayed INSERT
    mesh.deliver(1, 2, false); // node 3: node 2's UPDATE
    mesh.drain(|_| 0); // then everything else, node 1's INSERT included
    mesh.check_converged();
    assert_eq!(mesh.nodes[2].rows[&7].stamps.node, Some(2));
}

/// The hard case: node 1 deletes a row while node 2 updates it with a newer version. Node 1 never
/// gets node 2's row back from the UPDATE (no row to update); node 2 re-sends it as an INSERT when
/// the losing tombstone reaches it, and node 1 accepts it because it beats the tombstone.
#[test]
fn newer_update_survives_a_concurrent_delete() {
    let policy = Policy::parse(&["1", "last_xacttime", "last", "2"]).unwrap();
    let mut mesh = Mesh::new(policy, vec![0, 0, 0]);
    mesh.local_write(0, 3, 0);
    mesh.drain(|_| 0);
    mesh.local_delete(0, 3); // node 1 deletes ...
    mesh.local_write(1, 3, 0); // ... while node 2 updates, later
    mesh.drain(|_| 0);
    mesh.check_converged();
    assert_eq!(mesh.nodes[0].rows[&3].stamps.node, Some(2));
}
