//! Property test: N simulated replicas, each running the production engine
//! ([`mm_conflict_core::engine`]) over an in-memory store, converge.
//!
//! The model follows PostgreSQL 15 native logical replication in a full mesh, and the store
//! follows what PostgreSQL does around the trigger:
//! * every node publishes every transaction it writes, local or applied from a peer (PG15 has no
//!   `origin = none`), to each peer over its own FIFO path, with the changes it actually made;
//! * a replicated UPDATE or DELETE for a key the node does not have is skipped without firing a
//!   trigger; a local write of an existing key is an UPDATE, of a new key an INSERT;
//! * the engine's own writes (an INSERT converted to an UPDATE, a re-send's DELETE + INSERT) go
//!   through the engine again, as they go through the trigger again in PostgreSQL;
//! * a lookup may meet a version still being written and must wait for it without the key lock;
//! * paths deliver in any interleaving, and a transaction may be delivered twice (a worker restart
//!   replays from the last flushed position);
//! * rows carry a value of a second unique key (besides the primary key), drawn from a small set
//!   so that nodes collide on it: a local write that would duplicate it fails as in PostgreSQL,
//!   and a replicated one goes through the engine's unique contest.
//!
//! After all paths drain, every replica must hold the same rows, no two rows may share a unique
//! value, each key must be in the state of the best version ever written for it (a row, or absent
//! when that is a tombstone, including those that delete the losers of unique contests), and no
//! local `last`-mode write on an automatic criterion may have been refused.

use std::collections::{BTreeMap, VecDeque};

use mm_conflict_core::engine::{self, Action, Local, Lookup, Refusal, Resolution, Stored};
use mm_conflict_core::repair;
use mm_conflict_core::stamp::Clock;
use mm_conflict_core::{repair_winner, Amount, Delta, Held};
use mm_conflict_core::{
    Criterion, Decision, Direction, LocalConflictMode, Micros, Policy, RowStamps, Store, Tombstone,
    Tombstones, Version,
};
use proptest::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Row {
    key: u8,
    /// The value of the second unique key (`None`: NULL, which never collides).
    unique: Option<u8>,
    stamps: RowStamps,
    /// Identifies the write that produced this row.
    write_id: u32,
    /// The value of the delta column `balance` (tables whose policy declares it), and its state.
    amount: i64,
    delta: Option<Delta>,
}

impl Row {
    /// The row with the delta state the engine gave its write (and the sum of that state).
    fn with_delta(mut self, delta: Option<Delta>) -> Row {
        if let Some(d) = delta {
            self.amount = d.sums(1).unwrap()[0].to_i64().unwrap();
            self.delta = Some(d);
        }
        self
    }
}

#[derive(Clone, Debug)]
enum Change {
    Insert(u8, Row),
    Update(u8, Row),
    Delete(u8),
    Tombstone(u8, Tombstone),
}

type Txn = Vec<Change>;

#[derive(Clone, Debug)]
enum Step {
    /// Node, key, user criterion value (used by `Criterion::Column` policies), unique value.
    Write(usize, u8, i64, Option<u8>),
    Delete(usize, u8),
    /// From, to (indexes into the peer list), duplicate?
    Deliver(usize, usize, bool),
}

#[derive(Clone, Default)]
struct Replica {
    rows: BTreeMap<u8, Row>,
    tombstones: BTreeMap<u8, Tombstone>,
}

/// One node's table and tombstones, serving one key to the engine. What it writes goes to `out`,
/// the node's transaction as its peers will receive it.
struct NodeStore<'a> {
    replica: &'a mut Replica,
    policy: &'a Policy,
    key: u8,
    out: &'a mut Txn,
    /// Lookups that first meet a concurrent writer (consumed one per lookup).
    busy: &'a mut VecDeque<bool>,
    decisions: &'a mut Vec<Decision>,
    /// Tombstones the unique contests gave to keys (they count as written versions).
    burials: &'a mut Vec<(u8, Version)>,
    key_locked: bool,
    /// A repair's write of a row whose content differs under the stored row's very version.
    same_version: bool,
    /// The delta state the engine gave the write it decided last.
    pending: Option<Delta>,
}

/// PostgreSQL's unique index: writing `row` while another key holds its unique value fails (an
/// apply worker would stop on it).
fn assert_unique(replica: &Replica, row: &Row) {
    assert!(
        row.unique.is_none()
            || !replica
                .rows
                .values()
                .any(|r| r.key != row.key && r.unique == row.unique),
        "a replicated write of key {} duplicates unique value {:?} (the apply worker would fail)",
        row.key,
        row.unique
    );
}

impl NodeStore<'_> {
    fn lookup<T>(&mut self, found: Option<T>) -> Lookup<T, ()> {
        assert!(self.key_locked, "a lookup without the key lock");
        if self.busy.pop_front().unwrap_or(false) {
            return Lookup::InProgress(());
        }
        found.map_or(Lookup::Absent, Lookup::Found)
    }
}

impl NodeStore<'_> {
    /// A replicated INSERT of `row` (key `key`), as the apply worker and the trigger run it.
    fn insert_arrives(&mut self, policy: &Policy, key: u8, row: &Row) {
        match engine::replicated_insert(self, policy, row, false) {
            Ok(Action::Apply) => {
                assert_unique(self.replica, row);
                let row = row.clone().with_delta(self.pending.take());
                self.replica.rows.insert(key, row.clone());
                self.out.push(Change::Insert(key, row));
            }
            Ok(Action::Skip) => {}
            other => panic!("unexpected result of a replicated insert: {other:?}"),
        }
    }

    /// A replicated tombstone of `key`: stored if it beats the key's, then (the AFTER trigger of
    /// the tombstone table) settling the key's row.
    fn tombstone_arrives(&mut self, policy: &Policy, key: u8, t: &Tombstone) {
        if engine::tombstone_arrives(self, t) {
            self.replica.tombstones.insert(key, *t);
            self.out.push(Change::Tombstone(key, *t));
            engine::settle(self, policy, t);
        }
    }
}

impl Tombstones for NodeStore<'_> {
    type Waiter = ();

    fn lock_key(&mut self) {
        self.key_locked = true;
    }

    fn unlock_key(&mut self) {
        self.key_locked = false;
    }

    fn wait(&mut self, _: ()) {
        assert!(!self.key_locked, "waiting while holding the key lock");
    }

    fn find_tombstone(&mut self) -> Lookup<Tombstone, ()> {
        let found = self.replica.tombstones.get(&self.key).copied();
        self.lookup(found)
    }

    fn record_tombstone(&mut self, tombstone: &Tombstone) {
        self.replica.tombstones.insert(self.key, *tombstone);
        self.out.push(Change::Tombstone(self.key, *tombstone));
    }

    fn remove_tombstone(&mut self) {
        // Peers skip the replicated DELETE of a tombstone: nothing to publish.
        self.replica.tombstones.remove(&self.key);
    }

    fn tombstones_below(&mut self, micros: Micros) -> bool {
        assert!(
            self.key_locked,
            "the tombstones' mark read without the key lock"
        );
        // Exact here (PostgreSQL's marks cover buckets of keys and only ever rise, so they may say
        // false where this says true).
        self.replica.tombstones.get(&self.key).is_none_or(|t| {
            [t.version.criterion, t.stamps.xacttime, t.stamps.stattime]
                .into_iter()
                .flatten()
                .all(|v| v < micros)
        })
    }
}

impl Store for NodeStore<'_> {
    type Row = Row;

    fn keyed(&self) -> bool {
        true
    }

    fn overwrites_same_version(&self) -> bool {
        self.same_version
    }

    fn stamps(&self, row: &Row) -> RowStamps {
        row.stamps
    }

    fn find_row(&mut self) -> Lookup<Stored<Row>, ()> {
        let found = self.replica.rows.get(&self.key).map(|r| Stored {
            stamps: r.stamps,
            delta: (self.delta_columns() > 0).then(|| self.delta(r)),
            row: Some(r.clone()),
        });
        self.lookup(found)
    }

    fn overwrite(&mut self, row: &Row) -> bool {
        // UPDATE ... WHERE key: no row, nothing updated and no trigger fired.
        let Some(stored) = self.replica.rows.get(&self.key).cloned() else {
            return false;
        };
        let policy = self.policy;
        let written = match engine::replicated_update(self, policy, &stored, row, true) {
            Action::Apply => row.clone(),
            Action::Merge => stored,
            _ => return false,
        };
        assert_unique(self.replica, &written);
        let written = written.with_delta(self.pending.take());
        self.replica.rows.insert(self.key, written.clone());
        self.out.push(Change::Update(self.key, written));
        true
    }

    fn take_row(&mut self) -> Option<Row> {
        let row = self.replica.rows.get(&self.key).cloned()?;
        let policy = self.policy;
        assert_eq!(
            engine::replicated_delete(self, policy, &row, true),
            Action::Pass
        );
        self.replica.rows.remove(&self.key);
        self.out.push(Change::Delete(self.key));
        Some(row)
    }

    fn lock_row(&mut self) -> bool {
        assert!(!self.key_locked, "locking a row while holding the key lock");
        self.replica.rows.contains_key(&self.key)
    }

    fn put_row(&mut self, row: &Row) {
        let policy = self.policy;
        match engine::replicated_insert(self, policy, row, true) {
            Ok(Action::Pass) => {
                assert_unique(self.replica, row);
                let row = row.clone().with_delta(self.pending.take());
                self.replica.rows.insert(self.key, row.clone());
                self.out.push(Change::Insert(self.key, row));
            }
            other => panic!(
                "a re-send was not inserted: {other:?}; key {} row {:?} tombstone {:?} rows {:?}",
                self.key,
                row,
                self.replica.tombstones.get(&self.key),
                self.replica.rows
            ),
        }
    }

    fn report(&mut self, resolution: &Resolution<Row>) {
        self.decisions.push(resolution.decision);
    }

    fn find_unique_conflict(&mut self, row: &Row) -> Lookup<Stored<Row>, ()> {
        let Some(value) = row.unique else {
            return Lookup::Absent;
        };
        let found = self
            .replica
            .rows
            .values()
            .find(|r| r.key != row.key && r.unique == Some(value))
            .map(|r| Stored {
                stamps: r.stamps,
                delta: None,
                row: Some(r.clone()),
            });
        if self.busy.pop_front().unwrap_or(false) {
            return Lookup::InProgress(());
        }
        found.map_or(Lookup::Absent, Lookup::Found)
    }

    fn delta_columns(&self) -> usize {
        self.policy.delta_columns.len()
    }

    fn delta(&self, row: &Row) -> Delta {
        row.delta
            .clone()
            .unwrap_or_else(|| Delta::base(vec![Amount::from_i64(row.amount)]))
    }

    fn amounts(&self, row: &Row) -> Vec<Amount> {
        vec![Amount::from_i64(row.amount)]
    }

    fn write_delta(&mut self, delta: Delta) {
        self.pending = Some(delta);
    }

    fn lock_unique_values(&mut self, _row: &Row, _old: Option<&Row>) {
        // One writer at a time in the model: nothing to serialise.
    }

    fn bury(&mut self, row: &Row, tombstone: &Tombstone) -> bool {
        // As the tombstone table's triggers do for a tombstone written in an apply session.
        let key = std::mem::replace(&mut self.key, row.key);
        let stored = engine::tombstone_arrives(self, tombstone);
        if stored {
            self.replica.tombstones.insert(row.key, *tombstone);
            self.out.push(Change::Tombstone(row.key, *tombstone));
            self.burials.push((row.key, tombstone.version));
            let policy = self.policy;
            engine::settle(self, policy, tombstone);
        }
        self.key = key;
        stored
    }
}

/// The best version ever written for a key: a row or a tombstone.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Written {
    Row(Row),
    Tombstone(Version),
}

struct Mesh {
    /// Each node's policy: the same order, its own node id.
    policies: Vec<Policy>,
    nodes: Vec<Replica>,
    /// paths[from][to]
    paths: Vec<Vec<VecDeque<Txn>>>,
    skew: Vec<i64>,
    tick: i64,
    next_write: u32,
    written: BTreeMap<u8, Vec<Written>>,
    busy: VecDeque<bool>,
    decisions: Vec<Decision>,
    burials: Vec<(u8, Version)>,
    /// Delta columns: the sum of the changes every committed local write made to each key's
    /// `balance`, for keys never deleted (deleted ones are in `ended`).
    increments: BTreeMap<u8, i64>,
    ended: std::collections::BTreeSet<u8>,
    /// Delta columns: each node's changes to each key, in order (its entry's `seq` counts them).
    changes: BTreeMap<(u8, usize), Vec<i64>>,
    /// Nodes removed from the mesh, with, per key, the highest sequence number of their entry
    /// that any survivor held when they went.
    removed: BTreeMap<usize, BTreeMap<u8, u64>>,
}

impl Mesh {
    fn new(policy: Policy, skew: Vec<i64>) -> Mesh {
        Mesh::with_busy(policy, skew, Vec::new())
    }

    fn with_busy(policy: Policy, skew: Vec<i64>, busy: Vec<bool>) -> Mesh {
        let n = skew.len();
        let policies = (1..=n as i16)
            .map(|node_id| Policy {
                node_id,
                ..policy.clone()
            })
            .collect();
        Mesh {
            policies,
            nodes: vec![Replica::default(); n],
            paths: vec![vec![VecDeque::new(); n]; n],
            skew,
            tick: 0,
            next_write: 0,
            written: BTreeMap::new(),
            busy: busy.into(),
            decisions: Vec::new(),
            burials: Vec::new(),
            increments: BTreeMap::new(),
            changes: BTreeMap::new(),
            removed: BTreeMap::new(),
            ended: Default::default(),
        }
    }

    fn policy(&self) -> &Policy {
        &self.policies[0]
    }

    fn version(&self, row: &Row) -> Version {
        self.policy().version(&row.stamps)
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
            if to != from && !self.removed.contains_key(&to) {
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
            self.policy().criterion,
            Criterion::LastXactTime | Criterion::LastStatTime
        ) && self.policy().direction == Direction::Last
    }

    /// Runs `f` with node `node`'s store for `key`; returns what it wrote (the node's
    /// transaction), `f`'s result and the delta state the engine gave the write it decided last.
    fn with_store<T>(
        &mut self,
        node: usize,
        key: u8,
        f: impl FnOnce(&mut NodeStore) -> T,
    ) -> (Txn, (T, Option<Delta>)) {
        let mut out = Vec::new();
        let mut store = NodeStore {
            replica: &mut self.nodes[node],
            policy: &self.policies[node],
            key,
            out: &mut out,
            busy: &mut self.busy,
            decisions: &mut self.decisions,
            burials: &mut self.burials,
            key_locked: false,
            same_version: false,
            pending: None,
        };
        let result = f(&mut store);
        let pending = store.pending.take();
        for (key, version) in self.burials.drain(..) {
            self.ended.insert(key);
            self.written
                .entry(key)
                .or_default()
                .push(Written::Tombstone(version));
        }
        (out, (result, pending))
    }

    fn local(&mut self, node: usize) -> Local {
        Local {
            clock: self.clock(node),
            mode: LocalConflictMode::Error,
        }
    }

    /// A local INSERT (new key) or UPDATE (existing key). One that would duplicate a unique
    /// value another row holds here fails, as in PostgreSQL.
    fn local_write(&mut self, node: usize, key: u8, user_value: i64, unique: Option<u8>) {
        if self.removed.contains_key(&node) {
            return;
        }
        // The delta column: an INSERT sets it to the value, an UPDATE adds value - 20.
        let stored = self.nodes[node].rows.get(&key).cloned();
        let amount = match &stored {
            Some(old) => old.amount + user_value - 20,
            None => user_value,
        };
        if unique.is_some()
            && self.nodes[node]
                .rows
                .values()
                .any(|r| r.key != key && r.unique == unique)
        {
            return;
        }
        let local = self.local(node);
        self.next_write += 1;
        let new = Row {
            key,
            unique,
            stamps: RowStamps {
                user_criterion: Some(user_value),
                ..RowStamps::default()
            },
            write_id: self.next_write,
            amount,
            delta: stored.as_ref().and_then(|r| r.delta.clone()),
        };
        let policy = self.policies[node].clone();
        let (mut out, (action, pending)) = self.with_store(node, key, |s| match &stored {
            Some(old) => engine::local_update(s, &policy, local, old, &new),
            // Every other insert is an upsert's: it also looks the (absent) row up, meeting
            // writers still running as any lookup does.
            None => engine::local_insert(s, &policy, local, &new, new.write_id % 2 == 0),
        });
        match action {
            Ok(Action::Stamp(stamps)) => {
                if !policy.delta_columns.is_empty() {
                    let was = stored.as_ref().map_or(0, |old| old.amount);
                    *self.increments.entry(key).or_default() += amount - was;
                    self.changes
                        .entry((key, node))
                        .or_default()
                        .push(amount - was);
                    assert!(
                        pending.is_some(),
                        "a local write of a delta table without a state"
                    );
                }
                let row = Row {
                    stamps: RowStamps {
                        xacttime: Some(stamps.xacttime),
                        stattime: Some(stamps.stattime),
                        node: Some(policy.node_id),
                        ..new.stamps
                    },
                    ..new
                }
                .with_delta(pending);
                self.nodes[node].rows.insert(key, row.clone());
                self.written
                    .entry(key)
                    .or_default()
                    .push(Written::Row(row.clone()));
                out.push(if stored.is_some() {
                    Change::Update(key, row)
                } else {
                    Change::Insert(key, row)
                });
            }
            Err(Refusal::LocalConflict { .. }) => {
                assert!(!self.automatic(), "a local last-mode write was refused");
            }
            other => panic!("unexpected result of a local write: {other:?}"),
        }
        self.publish(node, out);
    }

    fn local_delete(&mut self, node: usize, key: u8) {
        if self.removed.contains_key(&node) {
            return;
        }
        let Some(old) = self.nodes[node].rows.get(&key).cloned() else {
            return;
        };
        let local = self.local(node);
        let policy = self.policies[node].clone();
        let (mut out, (action, _)) =
            self.with_store(node, key, |s| engine::local_delete(s, &policy, local, &old));
        match action {
            Ok(Action::Pass) => {
                self.ended.insert(key);
                self.nodes[node].rows.remove(&key);
                let tombstone = self.nodes[node].tombstones[&key];
                self.written
                    .entry(key)
                    .or_default()
                    .push(Written::Tombstone(tombstone.version));
                out.push(Change::Delete(key));
            }
            Err(Refusal::LocalConflict { .. }) => {
                assert!(!self.automatic(), "a local last-mode delete was refused");
            }
            other => panic!("unexpected result of a local delete: {other:?}"),
        }
        self.publish(node, out);
    }

    /// Applies one transaction at `to` as its apply worker would; returns what `to` publishes.
    fn apply(&mut self, to: usize, txn: &Txn) -> Txn {
        let policy = self.policies[to].clone();
        let mut published = Vec::new();
        for change in txn {
            let (out, ((), _)) = match change.clone() {
                Change::Tombstone(key, t) => {
                    self.with_store(to, key, |s| s.tombstone_arrives(&policy, key, &t))
                }
                Change::Delete(key) => self.with_store(to, key, |s| {
                    // PostgreSQL skips a DELETE of a missing row without firing any trigger.
                    let Some(row) = s.replica.rows.get(&key).cloned() else {
                        return;
                    };
                    if engine::replicated_delete(s, &policy, &row, false) == Action::Pass {
                        s.replica.rows.remove(&key);
                        s.out.push(Change::Delete(key));
                    }
                }),
                Change::Insert(key, row) => {
                    self.with_store(to, key, |s| s.insert_arrives(&policy, key, &row))
                }
                Change::Update(key, row) => self.with_store(to, key, |s| {
                    // PostgreSQL skips an UPDATE of a missing row without firing any trigger.
                    let Some(stored) = s.replica.rows.get(&key).cloned() else {
                        return;
                    };
                    let written = match engine::replicated_update(s, &policy, &stored, &row, false)
                    {
                        Action::Apply => row,
                        // The stored row, with the increments it lacked.
                        Action::Merge => stored,
                        _ => return,
                    };
                    assert_unique(s.replica, &written);
                    let written = written.with_delta(s.pending.take());
                    s.replica.rows.insert(key, written.clone());
                    s.out.push(Change::Update(key, written));
                }),
            };
            published.extend(out);
        }
        published
    }

    fn deliver(&mut self, from: usize, to: usize, duplicate: bool) {
        if self.removed.contains_key(&to) {
            return;
        }
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

    /// Runs one step of a scenario.
    fn run(&mut self, step: Step) {
        match step {
            Step::Write(n, k, v, u) => self.local_write(n, k, v, u),
            Step::Delete(n, k) => self.local_delete(n, k),
            Step::Deliver(f, t, dup) => self.deliver(f, t, dup),
        }
    }

    /// [`Mesh::drain`], picking the busy paths by `choices` in turn (`turn`: where the last
    /// drain left off, so that consecutive drains go on through the choices).
    fn drain_by(&mut self, choices: &[usize], turn: &mut usize) {
        self.drain(|len| {
            *turn += 1;
            choices[*turn % choices.len()] % len
        });
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

    /// What node `node` holds for `key`, as `table_diff` reads it.
    fn held(&self, node: usize, key: u8) -> Held {
        let replica = &self.nodes[node];
        match (replica.rows.get(&key), replica.tombstones.get(&key)) {
            (Some(row), _) => Held::Row(self.version(row)),
            (None, Some(t)) => Held::Tombstone(t.version),
            (None, None) => Held::Nothing,
        }
    }

    /// Writes node `from`'s state of `key` on node `to`, as `mm_conflict._repair_apply` does: its
    /// row as a replicated INSERT, or its tombstone as a replicated tombstone (then published, as
    /// every write is). Returns whether it sent anything.
    fn repair_write(&mut self, from: usize, to: usize, key: u8, same_version: bool) -> bool {
        let row = self.nodes[from].rows.get(&key).cloned();
        let tombstone = self.nodes[from].tombstones.get(&key).copied();
        let policy = self.policies[to].clone();
        let (out, ((), _)) = match (row, tombstone) {
            (Some(row), _) => self.with_store(to, key, |s| {
                s.same_version = same_version;
                s.insert_arrives(&policy, key, &row)
            }),
            (None, Some(t)) => self.with_store(to, key, |s| s.tombstone_arrives(&policy, key, &t)),
            (None, None) => return false,
        };
        self.publish(to, out);
        true
    }

    /// `mm_conflict.repair` run on node `r` (what replication was carrying has arrived), by the
    /// planner that ships (`mm_conflict_core::repair`), over this mesh. Returns the keys written.
    fn repair(&mut self, r: usize, keys: &[u8]) -> usize {
        let peers = (0..self.nodes.len()).filter(|&p| p != r).collect();
        let mut view = RepairView {
            mesh: self,
            repairer: r,
            peers,
            keys: keys.to_vec(),
        };
        // A small batch, so that rounds of several transfers per peer are exercised.
        match repair::repair(&mut view, 2) {
            Ok(written) => written,
            Err(never) => match never {},
        }
    }

    /// A change behind the trigger: the row's content changes, its version does not, nothing is
    /// published.
    fn sneak(&mut self, node: usize, key: u8) {
        self.next_write += 1;
        let write = self.next_write;
        if let Some(row) = self.nodes[node].rows.get_mut(&key) {
            row.write_id = write;
        }
    }

    fn assert_identical(&self) {
        let first = self.survivors()[0];
        for i in self.survivors() {
            assert_eq!(
                self.nodes[i].rows,
                self.nodes[first].rows,
                "node {} differs from node {}",
                i + 1,
                first + 1
            );
        }
    }

    fn survivors(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|n| !self.removed.contains_key(n))
            .collect()
    }

    /// How far the survivors other than `gone` hold node `node`'s entries, per key.
    fn reached(&self, node: usize, gone: usize) -> BTreeMap<u8, u64> {
        let mut reached = BTreeMap::new();
        for s in self.survivors().into_iter().filter(|&s| s != gone) {
            for (key, row) in &self.nodes[s].rows {
                let seq = row
                    .delta
                    .as_ref()
                    .and_then(|d| d.entries.get(&(node as i16 + 1)))
                    .map_or(0, |e| e.seq);
                let best = reached.entry(*key).or_insert(0);
                *best = seq.max(*best);
            }
        }
        reached
    }

    /// Node `node` is removed (it died): what it sent that no survivor has applied is lost, and it
    /// takes no more part. Its entries that any survivor holds are recorded; so are, again, the
    /// entries of nodes removed before it, of which it may have held the only copy.
    fn remove(&mut self, node: usize) {
        if self.removed.contains_key(&node) || self.survivors().len() <= 2 {
            return;
        }
        let earlier: Vec<usize> = self.removed.keys().copied().collect();
        for n in earlier {
            let reached = self.reached(n, node);
            self.removed.insert(n, reached);
        }
        let reached = self.reached(node, node);
        self.removed.insert(node, reached);
        for other in 0..self.nodes.len() {
            self.paths[node][other].clear();
            self.paths[other][node].clear();
        }
    }

    /// After removals: on the survivors, each key never deleted holds every change of every
    /// survivor, and of each removed node exactly the changes that any survivor held when it went
    /// (a prefix of its changes, as its entry's sequence number says).
    fn check_delta_after_removals(&self) {
        self.assert_identical();
        let first = self.survivors()[0];
        for (key, row) in &self.nodes[first].rows {
            if self.ended.contains(key) {
                continue;
            }
            let state = row.delta.as_ref().expect("a row without a state");
            let mut expected = 0;
            for n in 0..self.nodes.len() {
                let changes = self.changes.get(&(*key, n)).cloned().unwrap_or_default();
                let counted = match self.removed.get(&n) {
                    Some(reached) => reached.get(key).copied().unwrap_or(0) as usize,
                    None => changes.len(),
                };
                let seq = state
                    .entries
                    .get(&(n as i16 + 1))
                    .map_or(0, |e| e.seq as usize);
                assert_eq!(
                    seq,
                    counted,
                    "key {key}: node {}'s entry counts {seq} of its changes, expected {counted}",
                    n + 1
                );
                expected += changes[..counted].iter().sum::<i64>();
            }
            assert_eq!(row.amount, expected, "key {key}: {state:?}");
        }
    }

    fn check_converged(&self) {
        let order = self.policy().order();
        self.assert_identical();
        let uniques: Vec<u8> = self.nodes[0]
            .rows
            .values()
            .filter_map(|r| r.unique)
            .collect();
        let distinct: std::collections::BTreeSet<u8> = uniques.iter().copied().collect();
        assert_eq!(distinct.len(), uniques.len(), "a unique value held twice");
        for (key, versions) in &self.written {
            let best = versions
                .iter()
                .max_by(|a, b| {
                    // A tombstone wins no tie against a row (`decide`): the row is the key's state.
                    let is_row = |w: &Written| matches!(w, Written::Row(_));
                    order
                        .compare(&self.written_version(a), &self.written_version(b))
                        .then_with(|| is_row(a).cmp(&is_row(b)))
                })
                .unwrap();
            let expected = match best {
                Written::Row(r) => Some(r),
                Written::Tombstone(_) => None,
            };
            // The delta column goes by the merge, not by the best version.
            let lww = |r: &Row| Row {
                amount: 0,
                delta: None,
                ..r.clone()
            };
            assert_eq!(
                self.nodes[0].rows.get(key).map(lww),
                expected.map(lww),
                "key {key} is not in its best version's state"
            );
        }
        if !self.policy().delta_columns.is_empty() {
            self.check_delta_sums();
        }
    }

    /// Delta columns: every row's `balance` is the sum of its state, and a key never deleted
    /// holds the sum of the changes every committed write made to it.
    fn check_delta_sums(&self) {
        for (key, row) in &self.nodes[0].rows {
            let state = row
                .delta
                .as_ref()
                .expect("a row of a delta table without a state");
            assert_eq!(
                state.sums(1).unwrap()[0].to_i64(),
                Some(row.amount),
                "key {key}: the column is not the sum of its state"
            );
            if !self.ended.contains(key) {
                assert_eq!(
                    row.amount, self.increments[key],
                    "key {key}: increments lost or counted twice ({state:?})"
                );
            }
        }
    }
}

/// The mesh as node `repairer` sees it during a repair: what `table_diff` reads (rows that
/// differ, judged by `repair_winner`) and the two ways `_repair_apply` writes.
struct RepairView<'a> {
    mesh: &'a mut Mesh,
    repairer: usize,
    peers: Vec<usize>,
    keys: Vec<u8>,
}

impl RepairView<'_> {
    fn differs(&self, p: usize, key: u8) -> bool {
        self.mesh.nodes[self.repairer].rows.get(&key) != self.mesh.nodes[p].rows.get(&key)
    }
}

impl repair::RepairMesh for RepairView<'_> {
    type Key = u8;
    type Error = std::convert::Infallible;

    fn peers(&self) -> usize {
        self.peers.len()
    }

    fn differing(&mut self, peer: usize) -> Result<Vec<u8>, Self::Error> {
        let p = self.peers[peer];
        Ok(self
            .keys
            .iter()
            .copied()
            .filter(|&k| self.differs(p, k))
            .collect())
    }

    /// The mesh was drained before the repair: nothing is in flight.
    fn wait_for_sync(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }

    fn judge(&mut self, peer: usize, keys: &[u8]) -> Result<Vec<repair::Judged<u8>>, Self::Error> {
        let p = self.peers[peer];
        let order = self.mesh.policy().order();
        Ok(keys
            .iter()
            .copied()
            .filter(|&k| self.differs(p, k))
            .map(|key| {
                let writer = self.mesh.nodes[p]
                    .rows
                    .get(&key)
                    .and_then(|row| row.stamps.node);
                repair::Judged {
                    key,
                    winner: repair_winner(
                        &order,
                        self.mesh.held(self.repairer, key),
                        self.mesh.held(p, key),
                    ),
                    peer_wrote: writer == Some(p as i16 + 1),
                }
            })
            .collect())
    }

    fn transfer(&mut self, t: &repair::Transfer<u8>) -> Result<(), Self::Error> {
        let p = self.peers[t.peer];
        let (from, to) = match t.way {
            repair::Way::Take => (p, self.repairer),
            repair::Way::Send => (self.repairer, p),
        };
        for &key in &t.keys {
            assert!(
                self.mesh.repair_write(from, to, key, t.same_version),
                "the plan sent key {key}, which node {} neither holds nor buried",
                from + 1
            );
        }
        Ok(())
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
    (
        criterion,
        direction,
        proptest::option::of(1i16..=4),
        proptest::bool::ANY,
    )
        .prop_map(|(criterion, direction, preferred_node, delta)| {
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
                delta_columns: if delta {
                    vec!["balance".into()]
                } else {
                    Vec::new()
                },
            }
        })
}

fn steps_strategy(nodes: usize) -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        3 => (0..nodes, 0u8..5, 0i64..40, proptest::option::weighted(0.7, 0u8..3))
            .prop_map(|(n, k, v, u)| Step::Write(n, k, v, u)),
        1 => (0..nodes, 0u8..5).prop_map(|(n, k)| Step::Delete(n, k)),
        6 => (0..nodes, 1..nodes, proptest::bool::weighted(0.1))
            .prop_map(move |(f, d, dup)| Step::Deliver(f, (f + d) % nodes, dup)),
    ];
    proptest::collection::vec(step, 1..300)
}

type Scenario = (Policy, Vec<i64>, Vec<Step>, Vec<usize>, Vec<bool>);

fn scenario() -> impl Strategy<Value = Scenario> {
    (2usize..=5).prop_flat_map(|n| {
        (
            policy_strategy(),
            proptest::collection::vec(-30i64..30, n),
            steps_strategy(n),
            proptest::collection::vec(0usize..1000, 64),
            // Which lookups first meet a writer still in progress.
            proptest::collection::vec(proptest::bool::weighted(0.05), 0..200),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn replicas_converge_to_the_best_version((policy, skew, steps, drain_choices, busy) in scenario()) {
        let mut mesh = Mesh::with_busy(policy, skew, busy);
        for step in steps {
            mesh.run(step);
        }
        mesh.drain_by(&drain_choices, &mut 0);
        mesh.check_converged();
    }
}

/// Ways a change fails to travel, besides the steps of [`Step`].
#[derive(Clone, Debug)]
enum Fault {
    Step(Step),
    /// The next transaction on a path is lost (written while the table was out of the publication).
    Lose(usize, usize),
    /// A node purges its tombstones.
    Purge(usize),
    /// A node changes a row behind its trigger.
    Sneak(usize, u8),
}

fn faults_strategy(nodes: usize) -> impl Strategy<Value = Vec<Fault>> {
    let fault = prop_oneof![
        3 => (0..nodes, 0u8..5, 0i64..40, proptest::option::weighted(0.7, 0u8..3))
            .prop_map(|(n, k, v, u)| Fault::Step(Step::Write(n, k, v, u))),
        1 => (0..nodes, 0u8..5).prop_map(|(n, k)| Fault::Step(Step::Delete(n, k))),
        5 => (0..nodes, 1..nodes, proptest::bool::weighted(0.1))
            .prop_map(move |(f, d, dup)| Fault::Step(Step::Deliver(f, (f + d) % nodes, dup))),
        2 => (0..nodes, 1..nodes).prop_map(move |(f, d)| Fault::Lose(f, (f + d) % nodes)),
        1 => (0..nodes).prop_map(Fault::Purge),
        1 => (0..nodes, 0u8..5).prop_map(|(n, k)| Fault::Sneak(n, k)),
    ];
    proptest::collection::vec(fault, 1..200)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Replicas made to differ (transactions lost on a path, tombstones purged early, rows
    /// changed behind the trigger) become identical after one repair from any node and the
    /// delivery of what it wrote; without purges and sneaks, every key ends in its best version,
    /// as if nothing had been lost. A second repair finds nothing to do.
    #[test]
    fn repair_makes_diverged_replicas_identical(
        (policy, skew, faults, drain_choices, repairer) in (2usize..=4).prop_flat_map(|n| (
            policy_strategy(),
            proptest::collection::vec(-30i64..30, n),
            faults_strategy(n),
            proptest::collection::vec(0usize..1000, 64),
            0..n,
        ))
    ) {
        repair_case(policy, skew, faults, &drain_choices, repairer);
    }
}

/// One case of `repair_makes_diverged_replicas_identical`.
fn repair_case(
    policy: Policy,
    skew: Vec<i64>,
    faults: Vec<Fault>,
    drain_choices: &[usize],
    repairer: usize,
) {
    let mut mesh = Mesh::new(policy, skew);
    let mut lossless = true;
    for fault in faults {
        match fault {
            Fault::Step(step) => mesh.run(step),
            Fault::Lose(f, t) => {
                mesh.paths[f][t].pop_front();
            }
            Fault::Purge(n) => {
                lossless &= mesh.nodes[n].tombstones.is_empty();
                mesh.nodes[n].tombstones.clear();
            }
            Fault::Sneak(n, k) => {
                lossless &= !mesh.nodes[n].rows.contains_key(&k);
                mesh.sneak(n, k);
            }
        }
    }
    let mut turn = 0;
    mesh.drain_by(drain_choices, &mut turn);
    let keys: Vec<u8> = (0..5).collect();
    mesh.repair(repairer, &keys);
    mesh.drain_by(drain_choices, &mut turn);
    mesh.assert_identical();
    if lossless {
        mesh.check_converged();
    }
    assert_eq!(mesh.repair(repairer, &keys), 0);
    assert_eq!(mesh.repair((repairer + 1) % mesh.nodes.len(), &keys), 0);
}

/// A case the shipped planner's order (all takes from a peer, then all sends) met: unique values
/// moving between keys while transactions are lost both ways.
#[test]
fn repair_with_unique_values_and_losses_both_ways() {
    use Fault::Lose;
    use Step::{Delete, Deliver, Write};
    let f = Fault::Step;
    let policy = Policy {
        node_id: 1,
        criterion: Criterion::NodeId { winner: 3 },
        direction: Direction::Last,
        preferred_node: None,
        delta_columns: Vec::new(),
    };
    let faults = vec![
        f(Write(1, 0, 0, None)),
        f(Deliver(1, 0, false)),
        f(Write(1, 2, 0, None)),
        f(Write(0, 0, 0, Some(1))),
        f(Deliver(0, 1, false)),
        f(Write(1, 0, 0, None)),
        f(Delete(0, 1)),
        f(Write(0, 0, 0, None)),
        f(Deliver(0, 1, false)),
        Lose(0, 1),
        f(Delete(0, 1)),
        Lose(1, 0),
        f(Write(1, 1, 0, Some(1))),
        f(Deliver(1, 0, false)),
        f(Deliver(1, 0, false)),
        f(Deliver(0, 1, false)),
        f(Write(0, 0, 0, None)),
        f(Write(0, 2, 0, Some(2))),
        f(Deliver(0, 1, false)),
        f(Write(0, 0, 0, None)),
        f(Deliver(0, 1, false)),
        f(Write(1, 2, 0, None)),
        f(Deliver(0, 1, false)),
        Lose(1, 0),
        f(Write(0, 0, 0, None)),
        f(Write(1, 1, 0, Some(2))),
        f(Deliver(1, 0, false)),
        Lose(1, 0),
    ];
    repair_case(policy, vec![20, -19], faults, &[0; 64], 0);
}

/// The article's failure, replayed: node 2 applies node 1's INSERT and then updates the row; node 3
/// hears from node 2 first. Node 2's path carries its relayed copy of the INSERT, then its UPDATE.
/// The article drops the relayed copy, so the UPDATE finds no row on node 3 and is lost for good
/// once node 1's INSERT arrives. Resolving relayed copies by version keeps the update.
#[test]
fn update_before_insert_is_healed_by_relayed_copies() {
    let policy = Policy::parse(&["1", "last_xacttime", "last", "2"]).unwrap();
    let mut mesh = Mesh::new(policy, vec![0, 0, 0]);
    mesh.local_write(0, 7, 0, None); // node 1 inserts
    mesh.deliver(0, 1, false); // node 2 applies it (and relays it)
    mesh.local_write(1, 7, 0, None); // node 2 updates
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
    mesh.local_write(0, 3, 0, None);
    mesh.drain(|_| 0);
    mesh.local_delete(0, 3); // node 1 deletes ...
    mesh.local_write(1, 3, 0, None); // ... while node 2 updates, later
    mesh.drain(|_| 0);
    mesh.check_converged();
    assert_eq!(mesh.nodes[0].rows[&3].stamps.node, Some(2));
    // Node 2 kept its row against node 1's older delete (and re-sent it).
    assert!(mesh.decisions.contains(&Decision::DeleteSkipped));
}

/// Two nodes insert different keys with the same unique value: the later row keeps the value on
/// every node, and the earlier one is deleted everywhere (a tombstone with the winner's version).
/// Then the loser's node updates its row to a newer version before it hears of the contest: that
/// version wins in turn, everywhere.
#[test]
fn unique_value_goes_to_the_better_version_everywhere() {
    let policy = Policy::parse(&["1", "last_xacttime", "last", "2"]).unwrap();
    let mut mesh = Mesh::new(policy, vec![0, 0, 0]);
    mesh.local_write(0, 1, 0, Some(9)); // node 1: key 1 holds 9
    mesh.local_write(1, 2, 0, Some(9)); // node 2, later: key 2 holds 9
    mesh.drain(|_| 0);
    mesh.check_converged();
    assert!(!mesh.nodes[0].rows.contains_key(&1));
    assert_eq!(mesh.nodes[0].rows[&2].unique, Some(9));
    assert!(mesh.decisions.contains(&Decision::UniqueConflict));

    let policy = Policy::parse(&["1", "last_xacttime", "last", "2"]).unwrap();
    let mut mesh = Mesh::new(policy, vec![0, 0, 0]);
    mesh.local_write(0, 1, 0, Some(9));
    mesh.local_write(1, 2, 0, Some(9));
    mesh.deliver(0, 2, false); // node 3 gets key 1 first
    mesh.local_write(0, 1, 1, Some(9)); // node 1 updates key 1: now the newest version
    mesh.drain(|len| len - 1);
    mesh.check_converged();
    assert!(!mesh.nodes[0].rows.contains_key(&2));
    assert_eq!(mesh.nodes[0].rows[&1].unique, Some(9));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// Delta columns when nodes die: the survivors end identical, every survivor's increments are
    /// counted, and a removed node's increments are counted exactly as far as any survivor had
    /// them when it went (also those only one survivor had).
    #[test]
    fn delta_increments_of_removed_nodes_stay_counted(
        (skew, steps, removals, drain_choices) in (3usize..=5).prop_flat_map(|n| (
            proptest::collection::vec(-30i64..30, n),
            steps_strategy(n),
            proptest::collection::vec((0usize..300, 0..n), 1..3),
            proptest::collection::vec(0usize..1000, 64),
        ))
    ) {
        let policy = Policy {
            delta_columns: vec!["balance".into()],
            ..Policy::parse(&["1", "last_xacttime", "last"]).unwrap()
        };
        let mut mesh = Mesh::new(policy, skew);
        for (i, step) in steps.into_iter().enumerate() {
            for &(at, node) in &removals {
                if at == i {
                    mesh.remove(node);
                }
            }
            mesh.run(step);
        }
        mesh.drain_by(&drain_choices, &mut 0);
        mesh.check_delta_after_removals();
    }
}
