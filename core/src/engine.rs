//! The engine: the sequence of every path `mm_resolve` takes, written once, against the small
//! [`Store`] trait.
//!
//! PostgreSQL drives it in production (the extension implements [`Store`] over heap tuples, the
//! key lock, the primary-key probe and prepared statements); the convergence property test drives
//! the very same functions over an in-memory mesh. What wins is decided in [`crate::decide`]; this
//! module says in which order a path looks things up, locks, decides, writes, re-sends and reports.
//!
//! Paths, by what PostgreSQL fires:
//! * a local INSERT, UPDATE or DELETE: [`local_insert`], [`local_update`], [`local_delete`];
//! * a replicated INSERT, UPDATE or DELETE (apply or table-sync worker): [`replicated_insert`],
//!   [`replicated_update`], [`replicated_delete`];
//! * a tombstone arriving from a peer: [`tombstone_arrives`] (against the key's stored tombstone),
//!   then [`settle`] (against the key's row: delete it, or keep it and re-send it).
//!
//! A store serves one key at a time (the key of the row being written, or of the tombstone).

use crate::decide::{self, DeleteAction, InsertAction, LocalAction, LocalConflictMode, Outcome};
use crate::delta::{Amount, Delta, DeltaError};
use crate::policy::{Criterion, Policy};
use crate::report::Decision;
use crate::stamp::{stamp_local, Clock, Stamps};
use crate::version::{Direction, Micros, RowStamps, Version, VersionOrder};

/// A versioned delete of one key, as stored in `mm_conflict.tombstone`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tombstone {
    /// The delete's version.
    pub version: Version,
    /// The delete's clock stamps: a later local write of the key is stamped above them.
    pub stamps: RowStamps,
    /// The order of the table the delete was made under.
    pub order: VersionOrder,
}

/// What a lookup of the key found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup<T, W> {
    /// Nothing with this key.
    Absent,
    /// A version written by a transaction still running: wait for it (without the key lock),
    /// then look again.
    InProgress(W),
    Found(T),
}

/// A stored row as a lookup returns it: its stamps, and the row itself when the store keeps it
/// (production copies a row only when a report could show it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored<R> {
    pub stamps: RowStamps,
    /// The state of its delta columns (`None`: the table has none).
    pub delta: Option<Delta>,
    pub row: Option<R>,
}

/// What one resolution of a replicated change looked like, for counters and conflict reports.
#[derive(Debug)]
pub struct Resolution<'a, R> {
    pub decision: Decision,
    /// The stored version it was compared with: the row's, or the key's tombstone's; `None` when
    /// the key had neither.
    pub stored: Option<Version>,
    pub stored_row: Option<&'a R>,
    /// The incoming row's version, or the incoming tombstone's.
    pub incoming: Version,
    /// `None` for a delete.
    pub incoming_row: Option<&'a R>,
}

/// The tombstones of one key and the lock that serialises writers of that key.
pub trait Tombstones {
    /// A transaction of another session that a lookup may have to wait for.
    type Waiter;

    /// Takes the key lock (releasing any key lock this session took before).
    fn lock_key(&mut self);
    /// Releases the key lock, if held.
    fn unlock_key(&mut self);
    /// Waits for a transaction to end; never called with the key lock held.
    fn wait(&mut self, waiter: Self::Waiter);
    /// The key's stored tombstone (called with the key lock held).
    fn find_tombstone(&mut self) -> Lookup<Tombstone, Self::Waiter>;
    /// Stores `tombstone` as the key's, replacing a stored one.
    fn record_tombstone(&mut self, tombstone: &Tombstone);
    /// Removes the key's stored tombstone (as mm_conflict's own write, which peers skip).
    fn remove_tombstone(&mut self);
    /// True only when the key's tombstone, if it has one stored or being stored, has its
    /// criterion value and both stamps below `micros` (NULLs count as below). Called with the key
    /// lock held; a writer of a tombstone makes it count before writing it. False when that is not
    /// known, which is always right: the lookup then runs.
    fn tombstones_below(&mut self, _micros: Micros) -> bool {
        false
    }
}

/// The rows of one key of a replicated table, and what the engine does with them.
pub trait Store: Tombstones {
    /// A row: one a write carries, or one read back from the table.
    type Row;

    /// Whether the table has a primary key (without one, nothing is versioned by key).
    fn keyed(&self) -> bool;
    /// True while a repair writes rows that have the stored row's very version but another
    /// content (`mm_conflict.repair`): such a row is written instead of dropped as a copy that
    /// came back around the mesh. False for every change that travels by replication.
    fn overwrites_same_version(&self) -> bool {
        false
    }
    /// The bookkeeping values (and user criterion) of a row.
    fn stamps(&self, row: &Self::Row) -> RowStamps;
    /// The key's stored row, seeing rows of transactions still running (key lock held).
    fn find_row(&mut self) -> Lookup<Stored<Self::Row>, Self::Waiter>;
    /// An INSERT that beat the stored row becomes an UPDATE of it to `row`. The UPDATE goes
    /// through [`replicated_update`] again (with `converting`); false when it updated nothing
    /// (the row changed or went meanwhile).
    fn overwrite(&mut self, row: &Self::Row) -> bool;
    /// Deletes the key's row as mm_conflict's own write (its trigger lets it pass) and returns it
    /// as it was; `None` when it is gone.
    fn take_row(&mut self) -> Option<Self::Row>;
    /// Inserts `row` again as mm_conflict's own write: with [`Store::take_row`], the re-send of a
    /// row that beat a tombstone.
    fn put_row(&mut self, row: &Self::Row);
    /// [`Store::find_row`] for [`Store::lock_row`]: whether the key has a stored row (and where, for
    /// the store), without reading its values.
    fn find_row_to_lock(&mut self) -> Lookup<(), Self::Waiter> {
        match self.find_row() {
            Lookup::Absent => Lookup::Absent,
            Lookup::InProgress(waiter) => Lookup::InProgress(waiter),
            Lookup::Found(_) => Lookup::Found(()),
        }
    }
    /// Locks the key's stored row (found by [`Store::find_row_to_lock`]) for an update, as
    /// `INSERT ... ON CONFLICT DO UPDATE` is about to, waiting for the transactions that hold it
    /// (never called with the key lock held); false when the row was deleted or updated meanwhile.
    fn lock_row(&mut self) -> bool;
    /// Counts a resolution and reports it if it is a conflict.
    fn report(&mut self, resolution: &Resolution<Self::Row>);
    /// A stored row of another key that holds one of `row`'s values of a unique key besides the
    /// primary key (seeing rows of transactions still running). The found row is always given.
    fn find_unique_conflict(&mut self, row: &Self::Row) -> Lookup<Stored<Self::Row>, Self::Waiter>;
    /// The key of `row` gets `tombstone` as a replicated tombstone would: stored if it beats the
    /// key's stored one, then settling that key's row (deleted if the tombstone beats it, kept
    /// and re-sent otherwise). Takes that key's lock (releasing this one's). Returns whether the
    /// tombstone was stored (false: the key's stored tombstone beat it, and the row was left).
    fn bury(&mut self, row: &Self::Row, tombstone: &Tombstone) -> bool;
    /// How many delta columns the table has (see [`crate::delta`]); 0: none, and the three
    /// methods below are never called.
    fn delta_columns(&self) -> usize {
        0
    }
    /// The state of `row`'s delta columns. A row without one (written before the columns were
    /// declared) holds its values as [`crate::delta::BASE_NODE`]'s.
    fn delta(&self, _row: &Self::Row) -> Delta {
        Delta::default()
    }
    /// The values of `row`'s delta columns as a local write sets them (a NULL is refused there).
    fn amounts(&self, _row: &Self::Row) -> Vec<Amount> {
        Vec::new()
    }
    /// The row the current action writes ([`Action::Stamp`] and [`Action::Apply`]: the new row;
    /// [`Action::Merge`]: the stored one) carries `delta`, and its delta columns its sums.
    fn write_delta(&mut self, _delta: Delta) {}
    /// Adds to the key lock (taking it if not held) the locks of `row`'s values of unique keys
    /// besides the primary key, so that writers of different keys that would hold the same value
    /// serialise as writers of one key do; only the values `old` (the row an UPDATE replaces) does
    /// not hold already, and nothing when there are none (or the table has no such keys).
    fn lock_unique_values(&mut self, row: &Self::Row, old: Option<&Self::Row>);
}

/// What the trigger does with the row PostgreSQL is about to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// A local write: write it with these stamps (`mm_islocal = true`, this node's id).
    Stamp(Stamps),
    /// A replicated write that won: write it as it came, marked `mm_islocal = false`.
    Apply,
    /// Write it unchanged (deletes, mm_conflict's own writes, tables without a primary key).
    Pass,
    /// A replicated UPDATE that lost, of a table with delta columns, whose increments the stored
    /// row lacked: write the stored row (same version) with the merged state
    /// ([`Store::write_delta`]).
    Merge,
    /// Do not write it: no new row version, no WAL, nothing relayed.
    Skip,
}

/// Which local write lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Insert,
    Update,
    Delete,
}

impl Operation {
    pub fn name(self) -> &'static str {
        match self {
            Operation::Insert => "insert",
            Operation::Update => "update",
            Operation::Delete => "delete",
        }
    }
}

/// Why the engine refused a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A local write that loses to the stored version (`mm_conflict.local_conflict = error`).
    LocalConflict {
        operation: Operation,
        stored: Version,
        written: Version,
    },
    /// A replicated INSERT into a table without a primary key: it cannot be resolved.
    NoPrimaryKey,
    /// A local write's delta columns cannot be counted (a sum out of range).
    Delta(DeltaError),
}

/// The settings a local write runs under.
#[derive(Clone, Copy, Debug)]
pub struct Local {
    pub clock: Clock,
    pub mode: LocalConflictMode,
}

/// Looks `find` up under the key lock, waiting (without the lock) for versions still being
/// written. Returns with the key lock held.
fn locked<S: Tombstones + ?Sized, T>(
    store: &mut S,
    find: impl Fn(&mut S) -> Lookup<T, S::Waiter>,
) -> Option<T> {
    store.lock_key();
    held(store, find)
}

/// [`locked`], for a caller that holds the key lock already.
fn held<S: Tombstones + ?Sized, T>(
    store: &mut S,
    find: impl Fn(&mut S) -> Lookup<T, S::Waiter>,
) -> Option<T> {
    loop {
        match find(store) {
            Lookup::Absent => return None,
            Lookup::Found(found) => return Some(found),
            Lookup::InProgress(waiter) => {
                store.unlock_key();
                store.wait(waiter);
                store.lock_key();
            }
        }
    }
}

/// How a row that won on its own key fares against the stored rows of other keys that hold its
/// unique values.
enum Contest {
    /// No other row holds its unique values: write it.
    Clear,
    /// It beat such a row, which is now deleted (everywhere, by a tombstone with its version);
    /// or it met a writer still in progress. Look again.
    Again,
    /// Such a row beat it: it is not written, and its key gets a tombstone with the winner's
    /// version (so that nodes that have it delete it).
    Lost,
}

/// The unique-key contest of `new` (whose version `incoming` won on its own key), under this
/// key's lock. The row with the lesser version loses the unique value and is deleted on every
/// node; the conflict is reported with both rows.
fn unique_contest<S: Store + ?Sized>(
    store: &mut S,
    policy: &Policy,
    new: &S::Row,
    incoming: Version,
) -> Contest {
    let order = policy.order();
    store.lock_unique_values(new, None);
    let other = match store.find_unique_conflict(new) {
        Lookup::Absent => return Contest::Clear,
        Lookup::InProgress(waiter) => {
            store.unlock_key();
            store.wait(waiter);
            return Contest::Again;
        }
        Lookup::Found(other) => other,
    };
    let Some(other_row) = other.row else {
        return Contest::Clear;
    };
    let other_version = policy.version(&other.stamps);
    store.unlock_key();
    store.report(&Resolution {
        decision: Decision::UniqueConflict,
        stored: Some(other_version),
        stored_row: Some(&other_row),
        incoming,
        incoming_row: Some(new),
    });
    let new_stamps = store.stamps(new);
    if order.beats(&incoming, &other_version) {
        // Look again once the other row is gone. If its key's stored tombstone kept the burial
        // out (a state only a forced local write leaves), the row stays and holds the value: this
        // row cannot take it, and looking again would only meet it again.
        if store.bury(&other_row, &burial(&order, incoming, &new_stamps)) {
            Contest::Again
        } else {
            Contest::Lost
        }
    } else {
        store.bury(new, &burial(&order, other_version, &other.stamps));
        Contest::Lost
    }
}

/// The tombstone that deletes the loser of a unique contest: the winner's version and stamps.
fn burial(order: &VersionOrder, winner: Version, stamps: &RowStamps) -> Tombstone {
    Tombstone {
        version: winner,
        stamps: RowStamps {
            user_criterion: None,
            ..*stamps
        },
        order: *order,
    }
}

fn check_local(
    order: &VersionOrder,
    mode: LocalConflictMode,
    operation: Operation,
    stored: Version,
    written: Version,
) -> Result<bool, Refusal> {
    match decide::local_write(order, &stored, &written, mode) {
        LocalAction::Write => Ok(true),
        LocalAction::Skip => Ok(false),
        LocalAction::RaiseConflict => Err(Refusal::LocalConflict {
            operation,
            stored,
            written,
        }),
    }
}

/// A local INSERT. A key deleted before must be re-inserted above its tombstone, so the key lock
/// is taken and the tombstone looked up; the lock stays until the row's index entry exists (the
/// store releases it at the end of the statement, or at the next key-locked write of this
/// session), so that others' probes see the row.
///
/// The lookup is skipped when it cannot change anything: under last-writer-wins on a stamp, with
/// no delta column, and the key's tombstone known to be below this write's clocks
/// ([`Tombstones::tombstones_below`]), the write's stamps are the clocks themselves, and the
/// write beats the tombstone.
///
/// `upsert`: the row is proposed by `INSERT ... ON CONFLICT DO UPDATE`, after which PostgreSQL
/// waits for the key's stored row if another transaction holds it. A DELETE of that row holds it
/// while its trigger waits for the key lock, so this trigger must not hand PostgreSQL the key
/// lock into that wait: it looks the row up, and when there is one, releases the key lock and
/// locks the row itself (waiting, as PostgreSQL would, without the lock). Once it holds the row
/// nobody can delete it, and the INSERT becomes the statement's UPDATE. A row deleted meanwhile
/// sends it back to the start, where it meets the delete's tombstone.
pub fn local_insert<S: Store + ?Sized>(
    store: &mut S,
    policy: &Policy,
    local: Local,
    new: &S::Row,
    upsert: bool,
) -> Result<Action, Refusal> {
    let tombstone = loop {
        if !store.keyed() {
            break None;
        }
        store.lock_key();
        let tombstone = if lookup_may_be_skipped(store, policy)
            && store.tombstones_below(local.clock.xact_start.min(local.clock.wall))
        {
            None
        } else {
            held(store, S::find_tombstone)
        };
        if upsert {
            match store.find_row_to_lock() {
                Lookup::Absent => {}
                Lookup::InProgress(waiter) => {
                    store.unlock_key();
                    store.wait(waiter);
                    continue;
                }
                Lookup::Found(_) => {
                    store.unlock_key();
                    if store.lock_row() {
                        // No row of this key is inserted: nothing for the key lock to cover.
                        break tombstone;
                    }
                    continue;
                }
            }
        }
        store.lock_unique_values(new, None);
        break tombstone;
    };
    let stamps = stamp_local(local.clock, tombstone.as_ref().map(|t| &t.stamps));
    if let Some(t) = &tombstone {
        let written = policy.local_version(&stamps, store.stamps(new).user_criterion);
        if !check_local(
            &policy.order(),
            local.mode,
            Operation::Insert,
            t.version,
            written,
        )? {
            return Ok(Action::Skip);
        }
    }
    // A new incarnation of the key's delta columns, named by the tombstone it is written over.
    if store.delta_columns() > 0 {
        let amounts = store.amounts(new);
        store.write_delta(Delta::inserted(
            tombstone.map(|t| t.version),
            policy.node_id,
            amounts,
        ));
    }
    Ok(Action::Stamp(stamps))
}

/// Whether a local INSERT's tombstone lookup may be skipped when no tombstone reaches its clocks:
/// only where a tombstone below the write's stamps can neither raise them nor beat the write
/// (not under `nodeid`, whose winner beats any time; not under `first`; not under a user
/// criterion column, whose values are the application's; not with delta columns, whose new
/// incarnation is named by the tombstone).
fn lookup_may_be_skipped<S: Store + ?Sized>(store: &S, policy: &Policy) -> bool {
    policy.direction == Direction::Last
        && matches!(
            policy.criterion,
            Criterion::LastXactTime | Criterion::LastStatTime
        )
        && store.delta_columns() == 0
}

/// A local UPDATE: stamped above the row it replaces, and refused (or skipped) if it would still
/// lose to it on every other node.
pub fn local_update<S: Store + ?Sized>(
    store: &mut S,
    policy: &Policy,
    local: Local,
    old: &S::Row,
    new: &S::Row,
) -> Result<Action, Refusal> {
    // A value of another unique key it sets must not race a replicated row taking it.
    if store.keyed() {
        store.lock_unique_values(new, Some(old));
    }
    let stored = store.stamps(old);
    let stamps = stamp_local(local.clock, Some(&stored));
    let written = policy.local_version(&stamps, store.stamps(new).user_criterion);
    if !check_local(
        &policy.order(),
        local.mode,
        Operation::Update,
        policy.version(&stored),
        written,
    )? {
        return Ok(Action::Skip);
    }
    // This node's entry takes the change (new − old, old as the state sums it).
    let columns = store.delta_columns();
    if columns > 0 {
        let state = store.delta(old);
        let change: Result<Vec<Amount>, DeltaError> = state.sums(columns).and_then(|was| {
            let now = store.amounts(new);
            now.iter().zip(&was).map(|(n, w)| n.sub(*w)).collect()
        });
        let next = change.and_then(|c| state.add(policy.node_id, &c));
        store.write_delta(next.map_err(Refusal::Delta)?);
    }
    Ok(Action::Stamp(stamps))
}

/// A local DELETE: a versioned write. Its tombstone, stamped above the row, is recorded under
/// the key lock before the row goes.
pub fn local_delete<S: Store + ?Sized>(
    store: &mut S,
    policy: &Policy,
    local: Local,
    old: &S::Row,
) -> Result<Action, Refusal> {
    // Without a primary key a delete cannot be versioned (PostgreSQL itself refuses to publish
    // deletes of a table without a replica identity).
    if !store.keyed() {
        return Ok(Action::Pass);
    }
    store.lock_key();
    let stored = store.stamps(old);
    let stamps = stamp_local(local.clock, Some(&stored));
    let version = policy.tombstone_version(&stored, &stamps);
    if !check_local(
        &policy.order(),
        local.mode,
        Operation::Delete,
        policy.version(&stored),
        version,
    )? {
        return Ok(Action::Skip);
    }
    store.record_tombstone(&Tombstone {
        version,
        stamps: RowStamps {
            xacttime: Some(stamps.xacttime),
            stattime: Some(stamps.stattime),
            node: Some(policy.node_id),
            user_criterion: None,
        },
        order: policy.order(),
    });
    Ok(Action::Pass)
}

/// A replicated UPDATE: applied only if its version beats the stored row's. `converting`: the
/// UPDATE that carries out an INSERT's conversion, which that INSERT reports.
pub fn replicated_update<S: Store + ?Sized>(
    store: &mut S,
    policy: &Policy,
    old: &S::Row,
    new: &S::Row,
    converting: bool,
) -> Action {
    let stored = policy.version(&store.stamps(old));
    let incoming = policy.version(&store.stamps(new));
    // Delta columns: the merged state, and the stored one it grew from.
    let merged = (store.delta_columns() > 0).then(|| {
        let (ours, theirs) = (store.delta(old), store.delta(new));
        let merged = ours.merge(&theirs, &policy.order());
        (merged, ours, theirs)
    });
    let outcome = match decide::resolve(&policy.order(), &stored, &incoming) {
        Outcome::SameVersion if store.overwrites_same_version() => Outcome::IncomingWins,
        outcome => outcome,
    };
    // A new version that wins may still lose a unique value to a row of another key.
    if outcome == Outcome::IncomingWins && store.keyed() {
        loop {
            match unique_contest(store, policy, new, incoming) {
                Contest::Clear => break,
                Contest::Again => continue,
                Contest::Lost => return Action::Skip,
            }
        }
    }
    // What is written, and whether it differs from what last-writer-wins alone would write
    // (the incoming row's state, or the stored row's): concurrent increments merged.
    let (action, merged_increments) = match (outcome, merged) {
        (Outcome::IncomingWins, Some((merged, _, theirs))) => {
            let differs = merged != theirs;
            store.write_delta(merged);
            (Action::Apply, differs)
        }
        (Outcome::IncomingWins, None) => (Action::Apply, false),
        (_, Some((merged, ours, _))) if merged != ours => {
            store.write_delta(merged);
            (Action::Merge, true)
        }
        (_, _) => (Action::Skip, false),
    };
    if !converting {
        store.report(&Resolution {
            decision: if merged_increments {
                Decision::DeltaMerged
            } else {
                outcome.into()
            },
            stored: Some(stored),
            stored_row: Some(old),
            incoming,
            incoming_row: Some(new),
        });
    }
    action
}

/// A replicated DELETE applies only when the key's tombstone (which travels before it in the
/// same transaction) beats the row. A DELETE without one (an unversioned delete, or the first half
/// of a re-send) is skipped: a row that beats its tombstone was settled, and reported, when the
/// tombstone arrived. `own_write`: mm_conflict's own re-send, which passes.
pub fn replicated_delete<S: Store + ?Sized>(
    store: &mut S,
    policy: &Policy,
    old: &S::Row,
    own_write: bool,
) -> Action {
    // Without a primary key there is no tombstone to compare with: apply as PostgreSQL would.
    if own_write || !store.keyed() {
        return Action::Pass;
    }
    let tombstone = locked(store, S::find_tombstone);
    store.unlock_key();
    let stored = policy.version(&store.stamps(old));
    match tombstone {
        Some(t)
            if decide::replicated_delete(&policy.order(), &stored, Some(&t.version))
                == DeleteAction::Delete =>
        {
            store.report(&Resolution {
                decision: Decision::DeleteApplied,
                stored: Some(stored),
                stored_row: Some(old),
                incoming: t.version,
                incoming_row: None,
            });
            Action::Pass
        }
        _ => Action::Skip,
    }
}

/// A replicated INSERT: the key is probed under the key lock (seeing inserts still running, and
/// waiting for them without the lock). No row: the key's tombstone decides; inserted, the key
/// lock is kept until the row's index entry exists. A row that loses: overwritten (the INSERT
/// becomes an UPDATE). A row that wins, or is the same version: the INSERT is skipped.
/// Replication never stops on a duplicate key. `own_write`: mm_conflict's own re-send, which is
/// resolved like any INSERT but not reported.
pub fn replicated_insert<S: Store + ?Sized>(
    store: &mut S,
    policy: &Policy,
    new: &S::Row,
    own_write: bool,
) -> Result<Action, Refusal> {
    if !store.keyed() {
        return Err(Refusal::NoPrimaryKey);
    }
    let order = policy.order();
    let incoming = policy.version(&store.stamps(new));
    let incoming_delta = (store.delta_columns() > 0).then(|| store.delta(new));
    let report = |store: &mut S, decision, stored: Option<Version>, stored_row: Option<&S::Row>| {
        if !own_write {
            store.report(&Resolution {
                decision,
                stored,
                stored_row,
                incoming,
                incoming_row: Some(new),
            });
        }
    };
    loop {
        let found = locked(store, S::find_row);
        // The trigger never waits while holding the key lock: a stored row is overwritten or
        // kept, and neither needs the lock.
        if found.is_some() {
            store.unlock_key();
        }
        let stored = found.as_ref().map(|f| policy.version(&f.stamps));
        // No row: the key's tombstone decides (still under the key lock).
        let tombstone = match found {
            Some(_) => None,
            None => match store.find_tombstone() {
                Lookup::Absent => None,
                Lookup::Found(t) => Some(t.version),
                Lookup::InProgress(waiter) => {
                    store.unlock_key();
                    store.wait(waiter);
                    continue;
                }
            },
        };
        let stored_row = found.as_ref().and_then(|f| f.row.as_ref());
        // A row that keeps its version may still lack increments the incoming one carries
        // (`grows`); one that loses may hold increments the incoming one lacks (`adds`).
        let (grows, adds) = match (
            found.as_ref().and_then(|f| f.delta.as_ref()),
            &incoming_delta,
        ) {
            (Some(ours), Some(theirs)) => {
                let merged = ours.merge(theirs, &order);
                (merged != *ours, merged != *theirs)
            }
            _ => (false, false),
        };
        let action =
            match decide::replicated_insert(&order, stored.as_ref(), tombstone.as_ref(), &incoming)
            {
                // A repair of a row whose content differs under the same version.
                InsertAction::Skip(Outcome::SameVersion)
                    if stored.is_some() && store.overwrites_same_version() =>
                {
                    InsertAction::ConvertToUpdate
                }
                action => action,
            };
        let merging = matches!(action, InsertAction::Skip(_)) && grows;
        let action = if merging {
            InsertAction::ConvertToUpdate
        } else {
            action
        };
        // A row that wins on its key may still lose its unique values to a row of another key.
        // (An INSERT converted into an UPDATE meets the contest in that UPDATE, once it holds the
        // row: here it would hold the values' locks while waiting for the row.)
        if action == InsertAction::Insert && !own_write {
            match unique_contest(store, policy, new, incoming) {
                Contest::Clear => {}
                Contest::Again => continue,
                Contest::Lost => return Ok(Action::Skip),
            }
        }
        match action {
            InsertAction::Insert => {
                if let Some(delta) = &incoming_delta {
                    store.write_delta(delta.clone());
                }
                report(store, Decision::Applied, tombstone, None);
                return Ok(if own_write {
                    Action::Pass
                } else {
                    Action::Apply
                });
            }
            InsertAction::ConvertToUpdate => {
                if store.overwrite(new) {
                    // What last-writer-wins alone would write (the stored row, or the incoming
                    // one) is not what was written: increments were added together.
                    let decision = if merging || adds {
                        Decision::DeltaMerged
                    } else {
                        Decision::InsertConvertedToUpdate
                    };
                    report(store, decision, stored, stored_row);
                    return Ok(Action::Skip);
                }
                // The row changed or went since the probe: decide again.
            }
            InsertAction::Skip(outcome) => {
                store.unlock_key();
                report(store, outcome.into(), stored.or(tombstone), stored_row);
                return Ok(Action::Skip);
            }
        }
    }
}

/// A replicated tombstone: stored if its key has none, or if it beats the stored one (which it
/// then replaces); skipped otherwise. Stored, the key lock is kept until its index entry exists.
pub fn tombstone_arrives<S: Tombstones + ?Sized>(store: &mut S, incoming: &Tombstone) -> bool {
    match locked(store, S::find_tombstone) {
        None => true,
        Some(stored) if !incoming.order.beats(&incoming.version, &stored.version) => {
            store.unlock_key();
            false
        }
        Some(_) => {
            store.remove_tombstone();
            true
        }
    }
}

/// A replicated UPDATE of a tombstone row (tombstones are replaced by DELETE + INSERT, but an
/// UPDATE is resolved too): applied only when the new version beats the old.
pub fn tombstone_updated(old: &Tombstone, new: &Tombstone) -> bool {
    new.order.beats(&new.version, &old.version)
}

/// A replicated DELETE of a tombstone row: purges stay on the node that ran them, so peers skip
/// them; mm_conflict's own removals (a tombstone replaced by a newer one) pass.
pub fn tombstone_deleted(replicated: bool, own_write: bool) -> bool {
    !replicated || own_write
}

/// A tombstone that is new on this node settles the key's row at once: the row is deleted if the
/// tombstone beats it; if the row beats it, the row is kept and re-sent (DELETE + INSERT, same
/// version), because nodes that applied the delete skip an UPDATE of a row they no longer have but
/// accept an INSERT that beats their tombstone. Deciding here, when the tombstone lands, and not
/// when the DELETE does, matters: a relay that had no row forwards the tombstone alone.
pub fn settle<S: Store + ?Sized>(store: &mut S, policy: &Policy, tombstone: &Tombstone) {
    let found = locked(store, S::find_row);
    store.unlock_key();
    if found.is_none() {
        return;
    }
    // Delete the row as it is now (the store locks it, so a concurrent update is not lost), then
    // put it back if it beats the tombstone.
    let Some(row) = store.take_row() else {
        return; // gone meanwhile
    };
    let stored = policy.version(&store.stamps(&row));
    let action = decide::new_tombstone(&policy.order(), &stored, &tombstone.version);
    if action == DeleteAction::KeepAndResend {
        store.put_row(&row);
    }
    store.report(&Resolution {
        decision: if action == DeleteAction::Delete {
            Decision::DeleteApplied
        } else {
            Decision::DeleteSkipped
        },
        stored: Some(stored),
        stored_row: Some(&row),
        incoming: tombstone.version,
        incoming_row: None,
    });
}
