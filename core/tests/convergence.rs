//! Property test: N simulated replicas running the core's rules converge.
//!
//! The model follows PostgreSQL 15 native logical replication in a full mesh:
//! * every node publishes every change it writes, local or applied from a peer (PG15 has no
//!   `origin = none`), to each peer over its own FIFO path;
//! * a replicated UPDATE for a key the node does not have is skipped without firing a trigger;
//! * paths deliver in any interleaving, and a message may be delivered twice (a worker restart
//!   replays from the last flushed position).
//!
//! After all paths drain, every replica must hold the same rows, each key's row must be the best
//! version ever written for it, and no local `last`-mode write on an automatic criterion may have
//! been refused.

use std::collections::{BTreeMap, VecDeque};

use mm_conflict_core::decide::{self, InsertAction, LocalAction, LocalConflictMode};
use mm_conflict_core::stamp::{stamp_local, Clock};
use mm_conflict_core::{Criterion, Direction, Policy, RowStamps, Version};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Row {
    stamps: RowStamps,
    /// Identifies the write that produced this row.
    write_id: u32,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Insert,
    Update,
}

#[derive(Clone, Copy, Debug)]
struct Msg {
    op: Op,
    key: u8,
    row: Row,
}

#[derive(Clone, Debug)]
enum Step {
    /// Node, key, user criterion value (used by `Criterion::Column` policies).
    Write(usize, u8, i64),
    /// From, to (indexes into the peer list), duplicate?
    Deliver(usize, usize, bool),
}

struct Mesh {
    policy: Policy,
    nodes: Vec<BTreeMap<u8, Row>>,
    /// paths[from][to]
    paths: Vec<Vec<VecDeque<Msg>>>,
    skew: Vec<i64>,
    tick: i64,
    next_write: u32,
    /// Every version ever written, per key.
    written: BTreeMap<u8, Vec<Row>>,
}

impl Mesh {
    fn new(policy: Policy, skew: Vec<i64>) -> Mesh {
        let n = skew.len();
        Mesh {
            policy,
            nodes: vec![BTreeMap::new(); n],
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

    fn publish(&mut self, from: usize, op: Op, key: u8, row: Row) {
        for to in 0..self.nodes.len() {
            if to != from {
                self.paths[from][to].push_back(Msg { op, key, row });
            }
        }
    }

    fn local_write(&mut self, node: usize, key: u8, user_value: i64) {
        self.tick += 10;
        let clock = Clock {
            xact_start: self.tick + self.skew[node],
            wall: self.tick + self.skew[node] + 3,
        };
        let stored = self.nodes[node].get(&key).copied();
        let stamps = stamp_local(clock, stored.as_ref().map(|r| &r.stamps));
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
        match stored {
            None => {
                self.nodes[node].insert(key, row);
                self.written.entry(key).or_default().push(row);
                self.publish(node, Op::Insert, key, row);
            }
            Some(old) => {
                let order = self.policy.order();
                let action = decide::local_write(
                    &order,
                    &self.version(&old),
                    &self.version(&row),
                    LocalConflictMode::Error,
                );
                let automatic = matches!(
                    self.policy.criterion,
                    Criterion::LastXactTime | Criterion::LastStatTime
                ) && self.policy.direction == Direction::Last;
                if automatic {
                    assert_eq!(
                        action,
                        LocalAction::Write,
                        "a local last-mode write was refused"
                    );
                }
                if action == LocalAction::Write {
                    self.nodes[node].insert(key, row);
                    self.written.entry(key).or_default().push(row);
                    self.publish(node, Op::Update, key, row);
                }
            }
        }
    }

    fn deliver(&mut self, from: usize, to: usize, duplicate: bool) {
        let msg = if duplicate {
            match self.paths[from][to].front() {
                Some(m) => *m,
                None => return,
            }
        } else {
            match self.paths[from][to].pop_front() {
                Some(m) => m,
                None => return,
            }
        };
        let order = self.policy.order();
        let incoming = self.version(&msg.row);
        let stored = self.nodes[to].get(&msg.key).copied();
        match msg.op {
            Op::Insert => {
                let stored_version = stored.map(|r| self.version(&r));
                match decide::replicated_insert(&order, stored_version.as_ref(), &incoming) {
                    InsertAction::Insert => {
                        self.nodes[to].insert(msg.key, msg.row);
                        self.publish(to, Op::Insert, msg.key, msg.row);
                    }
                    InsertAction::ConvertToUpdate => {
                        self.nodes[to].insert(msg.key, msg.row);
                        self.publish(to, Op::Update, msg.key, msg.row);
                    }
                    InsertAction::Skip(_) => {}
                }
            }
            Op::Update => {
                // PostgreSQL skips an UPDATE for a missing row without firing any trigger.
                let Some(stored) = stored else { return };
                if decide::resolve(&order, &self.version(&stored), &incoming)
                    == decide::Outcome::IncomingWins
                {
                    self.nodes[to].insert(msg.key, msg.row);
                    self.publish(to, Op::Update, msg.key, msg.row);
                }
            }
        }
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
            assert_eq!(node, &self.nodes[0], "node {} differs from node 1", i + 1);
        }
        for (key, rows) in &self.written {
            let best = rows
                .iter()
                .max_by(|a, b| order.compare(&self.version(a), &self.version(b)))
                .unwrap();
            assert_eq!(
                self.nodes[0].get(key),
                Some(best),
                "key {key} lost its best version"
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
        2 => (0..nodes, 0u8..6, 0i64..40).prop_map(|(n, k, v)| Step::Write(n, k, v)),
        5 => (0..nodes, 1..nodes, proptest::bool::weighted(0.1))
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
    assert_eq!(mesh.nodes[2][&7].stamps.node, Some(2));
}
