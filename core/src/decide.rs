//! The resolve decision: what the trigger does with a write, given the stored version.

use std::cmp::Ordering;

use crate::version::{Version, VersionOrder};

/// How an incoming (replicated) version relates to the stored one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The incoming version beats the stored one: apply it.
    IncomingWins,
    /// The stored version beats the incoming one: keep the stored row (a conflict the peer lost).
    StoredWins,
    /// Both are the same version: a copy that came back around the mesh. Drop it; dropping is
    /// what ends the loop, since a dropped change writes no WAL and is not relayed again.
    SameVersion,
}

pub fn resolve(order: &VersionOrder, stored: &Version, incoming: &Version) -> Outcome {
    match order.compare(incoming, stored) {
        Ordering::Greater => Outcome::IncomingWins,
        Ordering::Less => Outcome::StoredWins,
        Ordering::Equal => Outcome::SameVersion,
    }
}

/// What to do with a replicated INSERT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertAction {
    /// No row with that key (and no tombstone that beats it): insert it.
    Insert,
    /// A row with that key exists and loses: overwrite it with the incoming row.
    ConvertToUpdate,
    /// A row with that key exists and wins or is the same version: drop the incoming row.
    Skip(Outcome),
}

/// `stored` is the row with the same key, `tombstone` the recorded delete of that key; a row and
/// a tombstone may both exist (a row re-inserted after a delete beats its tombstone).
pub fn replicated_insert(
    order: &VersionOrder,
    stored: Option<&Version>,
    tombstone: Option<&Version>,
    incoming: &Version,
) -> InsertAction {
    match (stored, tombstone) {
        (Some(stored), _) => match resolve(order, stored, incoming) {
            Outcome::IncomingWins => InsertAction::ConvertToUpdate,
            other => InsertAction::Skip(other),
        },
        // A tombstone must beat the row to keep it out, as it must to delete a stored row
        // ([`replicated_delete`], [`new_tombstone`]): a row ties a tombstone only when the
        // tombstone buried another row of its key with the version of a row the same statement
        // wrote (a unique value moved between keys), and that row is the key's latest state.
        (None, Some(tombstone)) => match resolve(order, tombstone, incoming) {
            Outcome::StoredWins => InsertAction::Skip(Outcome::StoredWins),
            Outcome::IncomingWins | Outcome::SameVersion => InsertAction::Insert,
        },
        (None, None) => InsertAction::Insert,
    }
}

/// What happens to a stored row when a DELETE or a new tombstone for its key arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteAction {
    /// The tombstone beats the row: delete it.
    Delete,
    /// The row beats the tombstone (or there is none): keep it.
    Keep,
    /// Keep the row and send it again as an INSERT: nodes that applied the delete would never get
    /// it back from an UPDATE (PostgreSQL skips an UPDATE of a missing row without firing any
    /// trigger), but they accept an INSERT that beats their tombstone.
    KeepAndResend,
}

/// A replicated DELETE applies only when the key's stored tombstone beats the row. It never
/// re-sends: that is decided once, when the tombstone is stored ([`new_tombstone`]).
pub fn replicated_delete(
    order: &VersionOrder,
    stored: &Version,
    tombstone: Option<&Version>,
) -> DeleteAction {
    match tombstone {
        Some(t) if order.beats(t, stored) => DeleteAction::Delete,
        _ => DeleteAction::Keep,
    }
}

/// A tombstone that is new on this node settles the row of its key at once: deleted if the
/// tombstone wins, re-sent if the row wins. Deciding here, and only here, means each node re-sends
/// at most once per tombstone (re-sends do not bounce around the mesh), and it does not depend on
/// the DELETE that travels with the tombstone: a relay that had no row forwards the tombstone alone.
pub fn new_tombstone(order: &VersionOrder, stored: &Version, tombstone: &Version) -> DeleteAction {
    if order.beats(tombstone, stored) {
        DeleteAction::Delete
    } else {
        DeleteAction::KeepAndResend
    }
}

/// What a node holds for a key, as a repair compares two nodes (`mm_conflict.table_diff`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    Row(Version),
    Tombstone(Version),
    Nothing,
}

/// Which side's state of a key two nodes hold differently wins a repair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepairWinner {
    Local,
    Peer,
    /// Two rows with one version and different contents: no order settles it (a write that went
    /// around the trigger, or corruption).
    Equal,
}

/// The winner between two nodes' states of a key whose rows differ, decided as replication would
/// decide it: two rows by their versions; a tombstone beats a row only when its version does (as a
/// replicated tombstone settles a row); anything beats nothing.
pub fn repair_winner(order: &VersionOrder, local: Held, peer: Held) -> RepairWinner {
    use RepairWinner::*;
    let by = |local_wins: bool| if local_wins { Local } else { Peer };
    match (local, peer) {
        (Held::Row(l), Held::Row(p)) => match order.compare(&l, &p) {
            Ordering::Greater => Local,
            Ordering::Less => Peer,
            Ordering::Equal => Equal,
        },
        (Held::Row(r), Held::Tombstone(t)) => by(!order.beats(&t, &r)),
        (Held::Tombstone(t), Held::Row(r)) => by(order.beats(&t, &r)),
        (Held::Tombstone(l), Held::Tombstone(p)) => match order.compare(&l, &p) {
            Ordering::Less => Peer,
            Ordering::Greater => Local,
            Ordering::Equal => Equal,
        },
        (_, Held::Nothing) => Local,
        (Held::Nothing, _) => Peer,
    }
}

/// `mm_conflict.local_conflict`: what a local write that loses to the stored version does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalConflictMode {
    /// Raise an error; the statement fails and nothing diverges (default).
    Error,
    /// Drop the write silently, as the article's trigger does.
    Skip,
    /// Write it anyway: this node keeps a version every other node rejects (diverges).
    Apply,
}

/// What the trigger does with a local write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalAction {
    Write,
    Skip,
    RaiseConflict,
}

/// A local write must beat the version it replaces, or every peer would reject it.
pub fn local_write(
    order: &VersionOrder,
    stored: &Version,
    written: &Version,
    mode: LocalConflictMode,
) -> LocalAction {
    if order.beats(written, stored) {
        return LocalAction::Write;
    }
    match mode {
        LocalConflictMode::Error => LocalAction::RaiseConflict,
        LocalConflictMode::Skip => LocalAction::Skip,
        LocalConflictMode::Apply => LocalAction::Write,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Direction;

    const ORDER: VersionOrder = VersionOrder {
        direction: Direction::Last,
        winner: None,
        preferred: None,
    };

    fn v(c: i64, n: i16) -> Version {
        Version {
            criterion: Some(c),
            stattime: Some(c),
            node: Some(n),
        }
    }

    #[test]
    fn insert_paths() {
        fn insert(
            stored: Option<&Version>,
            tomb: Option<&Version>,
            incoming: &Version,
        ) -> InsertAction {
            replicated_insert(&ORDER, stored, tomb, incoming)
        }
        assert_eq!(insert(None, None, &v(1, 1)), InsertAction::Insert);
        assert_eq!(
            insert(Some(&v(1, 1)), None, &v(2, 2)),
            InsertAction::ConvertToUpdate
        );
        assert_eq!(
            insert(Some(&v(3, 1)), None, &v(2, 2)),
            InsertAction::Skip(Outcome::StoredWins)
        );
        assert_eq!(
            insert(Some(&v(2, 2)), None, &v(2, 2)),
            InsertAction::Skip(Outcome::SameVersion)
        );
        // a tombstone blocks older inserts of a deleted key, not newer ones
        assert_eq!(
            insert(None, Some(&v(5, 1)), &v(4, 2)),
            InsertAction::Skip(Outcome::StoredWins)
        );
        assert_eq!(insert(None, Some(&v(5, 1)), &v(6, 2)), InsertAction::Insert);
        // ... and not a row of its very version (a tombstone wins no tie, as in deletes)
        assert_eq!(insert(None, Some(&v(5, 1)), &v(5, 1)), InsertAction::Insert);
        // a live row is what an insert is compared with, even when a tombstone exists
        assert_eq!(
            insert(Some(&v(7, 1)), Some(&v(5, 1)), &v(6, 2)),
            InsertAction::Skip(Outcome::StoredWins)
        );
    }

    #[test]
    fn delete_paths() {
        assert_eq!(
            replicated_delete(&ORDER, &v(1, 1), Some(&v(2, 2))),
            DeleteAction::Delete
        );
        assert_eq!(
            replicated_delete(&ORDER, &v(3, 1), Some(&v(2, 2))),
            DeleteAction::Keep
        );
        assert_eq!(
            replicated_delete(&ORDER, &v(3, 1), None),
            DeleteAction::Keep
        );
        assert_eq!(
            new_tombstone(&ORDER, &v(1, 1), &v(2, 2)),
            DeleteAction::Delete
        );
        assert_eq!(
            new_tombstone(&ORDER, &v(3, 1), &v(2, 2)),
            DeleteAction::KeepAndResend
        );
    }

    #[test]
    fn local_write_modes() {
        let older = v(1, 1);
        let newer = v(2, 1);
        for mode in [
            LocalConflictMode::Error,
            LocalConflictMode::Skip,
            LocalConflictMode::Apply,
        ] {
            assert_eq!(
                local_write(&ORDER, &older, &newer, mode),
                LocalAction::Write
            );
        }
        assert_eq!(
            local_write(&ORDER, &newer, &older, LocalConflictMode::Error),
            LocalAction::RaiseConflict
        );
        assert_eq!(
            local_write(&ORDER, &newer, &older, LocalConflictMode::Skip),
            LocalAction::Skip
        );
        assert_eq!(
            local_write(&ORDER, &newer, &older, LocalConflictMode::Apply),
            LocalAction::Write
        );
        // Writing the very same version is not a win either.
        assert_eq!(
            local_write(&ORDER, &newer, &newer, LocalConflictMode::Error),
            LocalAction::RaiseConflict
        );
    }

    #[test]
    fn repair_winners() {
        use Held::*;
        use RepairWinner::*;
        let w = |l, p| repair_winner(&ORDER, l, p);
        assert_eq!(w(Row(v(2, 1)), Row(v(1, 1))), Local);
        assert_eq!(w(Row(v(1, 1)), Row(v(2, 2))), Peer);
        assert_eq!(w(Row(v(1, 1)), Row(v(1, 1))), Equal);
        // A tombstone wins only when it beats the row (a tie keeps the row, as settle does).
        assert_eq!(w(Row(v(1, 1)), Tombstone(v(2, 1))), Peer);
        assert_eq!(w(Row(v(2, 1)), Tombstone(v(1, 1))), Local);
        assert_eq!(w(Row(v(1, 1)), Tombstone(v(1, 1))), Local);
        assert_eq!(w(Tombstone(v(2, 1)), Row(v(1, 1))), Local);
        assert_eq!(w(Tombstone(v(1, 1)), Row(v(1, 1))), Peer);
        assert_eq!(w(Nothing, Row(v(1, 1))), Peer);
        assert_eq!(w(Row(v(1, 1)), Nothing), Local);
        assert_eq!(w(Tombstone(v(1, 1)), Nothing), Local);
    }
}
