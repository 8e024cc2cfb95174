//! How a replicated change ended, and whether that is a conflict: what `mm_conflict.conflict_log`
//! records and `mm_conflict.conflict_stats` counts.

use crate::decide::Outcome;
use crate::version::Version;

/// The outcome of one replicated change at the node that received it. Each change the trigger
/// resolves ends in exactly one of these, so the counters add up to the changes seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// A replicated INSERT or UPDATE was written: the key was new (or only deleted, by an older
    /// delete), or its version beat the stored row's.
    Applied,
    /// The stored version (the row, or the key's tombstone) beat the incoming change: nothing was
    /// written.
    KeptLocal,
    /// A replicated INSERT met a stored row with the same key and beat it: the row was overwritten.
    InsertConvertedToUpdate,
    /// A replicated delete (its tombstone) beat the stored row: the row was deleted.
    DeleteApplied,
    /// The stored row beat a replicated delete: the row was kept and sent again to the nodes that
    /// deleted it.
    DeleteSkipped,
    /// The incoming version is the stored one: a copy that came back around the mesh (a loop or a
    /// relay). Dropped; never a conflict.
    DuplicateDropped,
    /// A replicated row and a stored row of another key held the same value of a unique key
    /// (besides the primary key): the one with the lesser version was deleted, on every node, by
    /// a tombstone that carries the winner's version.
    UniqueConflict,
    /// A replicated change of a table with delta columns, where the state written differs from
    /// what last-writer-wins alone would write: increments that the incoming change and the
    /// stored row each lacked were added together (the other columns still went to the winning
    /// version).
    DeltaMerged,
}

impl Decision {
    /// Every decision, in the order of the counters.
    pub const ALL: [Decision; 8] = [
        Decision::Applied,
        Decision::KeptLocal,
        Decision::InsertConvertedToUpdate,
        Decision::DeleteApplied,
        Decision::DeleteSkipped,
        Decision::DuplicateDropped,
        Decision::UniqueConflict,
        Decision::DeltaMerged,
    ];

    /// The name used in `conflict_log.decision` and in log lines.
    pub fn name(self) -> &'static str {
        match self {
            Decision::Applied => "applied",
            Decision::KeptLocal => "kept_local",
            Decision::InsertConvertedToUpdate => "insert_converted_to_update",
            Decision::DeleteApplied => "delete_applied",
            Decision::DeleteSkipped => "delete_skipped",
            Decision::DuplicateDropped => "duplicate_dropped",
            Decision::UniqueConflict => "unique_conflict",
            Decision::DeltaMerged => "delta_merged",
        }
    }

    /// The counter slot of this decision (its place in [`Decision::ALL`]).
    pub fn index(self) -> usize {
        self as usize
    }

    /// pglogical's definition: a change that loses is a conflict; a change that wins is one only
    /// when the stored version was written by another node than the change's own (so a node's rows
    /// flowing one way, and a node updating its own rows, are never reported). A key that had no
    /// stored version (no row, no tombstone) is no conflict.
    pub fn is_conflict(self, stored: Option<&Version>, incoming: &Version) -> bool {
        match self {
            Decision::DuplicateDropped => false,
            Decision::KeptLocal | Decision::DeleteSkipped | Decision::UniqueConflict => true,
            Decision::Applied
            | Decision::InsertConvertedToUpdate
            | Decision::DeleteApplied
            | Decision::DeltaMerged => stored.is_some_and(|stored| stored.node != incoming.node),
        }
    }
}

/// A replicated row change that was compared with the stored row ends as its outcome says.
impl From<Outcome> for Decision {
    fn from(outcome: Outcome) -> Decision {
        match outcome {
            Outcome::IncomingWins => Decision::Applied,
            Outcome::StoredWins => Decision::KeptLocal,
            Outcome::SameVersion => Decision::DuplicateDropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(node: Option<i16>) -> Version {
        Version {
            criterion: Some(1),
            stattime: Some(1),
            node,
        }
    }

    #[test]
    fn names_and_indexes_follow_all() {
        for (i, d) in Decision::ALL.iter().enumerate() {
            assert_eq!(d.index(), i);
        }
        let names: std::collections::HashSet<_> = Decision::ALL.iter().map(|d| d.name()).collect();
        assert_eq!(names.len(), Decision::ALL.len());
    }

    #[test]
    fn outcomes_map_to_decisions() {
        assert_eq!(Decision::from(Outcome::IncomingWins), Decision::Applied);
        assert_eq!(Decision::from(Outcome::StoredWins), Decision::KeptLocal);
        assert_eq!(
            Decision::from(Outcome::SameVersion),
            Decision::DuplicateDropped
        );
    }

    #[test]
    fn what_counts_as_a_conflict() {
        let (one, two, none) = (v(Some(1)), v(Some(2)), v(None));
        // losing is always a conflict
        assert!(Decision::KeptLocal.is_conflict(Some(&one), &two));
        assert!(Decision::KeptLocal.is_conflict(Some(&one), &one));
        assert!(Decision::DeleteSkipped.is_conflict(Some(&two), &one));
        // winning is one only over another node's version
        for d in [
            Decision::Applied,
            Decision::InsertConvertedToUpdate,
            Decision::DeleteApplied,
        ] {
            assert!(d.is_conflict(Some(&one), &two), "{d:?}");
            assert!(!d.is_conflict(Some(&two), &two), "{d:?}");
            assert!(!d.is_conflict(None, &two), "{d:?}");
            // a row from before the mesh (no node) was written by someone else
            assert!(d.is_conflict(Some(&none), &two), "{d:?}");
        }
        // copies meeting their own version never are
        assert!(!Decision::DuplicateDropped.is_conflict(Some(&one), &two));
    }
}
