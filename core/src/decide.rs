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
    /// No row with that key: insert it.
    Insert,
    /// A row with that key exists and loses: overwrite it with the incoming row.
    ConvertToUpdate,
    /// A row with that key exists and wins or is the same version: drop the incoming row.
    Skip(Outcome),
}

pub fn replicated_insert(
    order: &VersionOrder,
    stored: Option<&Version>,
    incoming: &Version,
) -> InsertAction {
    match stored {
        None => InsertAction::Insert,
        Some(stored) => match resolve(order, stored, incoming) {
            Outcome::IncomingWins => InsertAction::ConvertToUpdate,
            other => InsertAction::Skip(other),
        },
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
        assert_eq!(
            replicated_insert(&ORDER, None, &v(1, 1)),
            InsertAction::Insert
        );
        assert_eq!(
            replicated_insert(&ORDER, Some(&v(1, 1)), &v(2, 2)),
            InsertAction::ConvertToUpdate
        );
        assert_eq!(
            replicated_insert(&ORDER, Some(&v(3, 1)), &v(2, 2)),
            InsertAction::Skip(Outcome::StoredWins)
        );
        assert_eq!(
            replicated_insert(&ORDER, Some(&v(2, 2)), &v(2, 2)),
            InsertAction::Skip(Outcome::SameVersion)
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
}
