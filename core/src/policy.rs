//! Trigger arguments → a resolution policy.
//!
//! `mm_resolve(node_id, criterion, first|last|winning_node, preferred_node)` is parsed here once per
//! relation (the shim caches the result), so nothing in this module is on the per-row path.

use crate::stamp::Stamps;
pub use crate::version::Direction;
use crate::version::{Micros, NodeId, RowStamps, Version, VersionOrder};

/// Smallest and largest node id a mesh may use (`mm_nodeid` is a `smallint`; 0 and negatives are
/// reserved so that "no node" can never collide with a real one).
pub const MIN_NODE_ID: i64 = 1;
pub const MAX_NODE_ID: i64 = i16::MAX as i64;

/// What orders two versions of a row before the tie-breakers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Criterion {
    /// Column `mm_last_xacttime`, stamped with the writing transaction's start time.
    LastXactTime,
    /// Column `mm_last_stattime`, stamped with the wall clock at the write.
    LastStatTime,
    /// Versions written by `winner` beat all others; among the rest, last writer wins on
    /// `mm_last_xacttime`.
    NodeId { winner: NodeId },
    /// A `timestamp`/`timestamptz` column the application maintains; the trigger never changes it.
    Column(String),
}

/// A parsed `mm_resolve(...)` argument list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub node_id: NodeId,
    pub criterion: Criterion,
    pub direction: Direction,
    pub preferred_node: Option<NodeId>,
    /// The table's delta (commutative) columns, in declaration order (see [`crate::delta`]):
    /// trigger arguments `delta=<column>` after the others.
    pub delta_columns: Vec<String>,
}

/// The prefix of a trigger argument that declares a delta column: `delta=balance`.
pub const DELTA_PREFIX: &str = "delta=";

/// Why a trigger argument list was rejected. The shim maps each variant to its own SQLSTATE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("mm_resolve expects 3 or 4 arguments, then any delta=<column> arguments, got {got}")]
    WrongArgCount { got: usize },
    #[error("mm_resolve argument {position} must be \"delta=<column>\", got \"{value}\"")]
    BadDeltaArgument { position: usize, value: String },
    #[error("mm_resolve declares delta column \"{column}\" twice")]
    DuplicateDeltaColumn { column: String },
    #[error("mm_resolve argument {position} ({name}) must be an integer node id, got \"{value}\"")]
    NodeIdNotInteger {
        position: usize,
        name: &'static str,
        value: String,
    },
    #[error(
        "mm_resolve argument {position} ({name}) is out of range: {value} (node ids are {MIN_NODE_ID}..{MAX_NODE_ID})"
    )]
    NodeIdOutOfRange {
        position: usize,
        name: &'static str,
        value: i64,
    },
    #[error("mm_resolve argument 3 must be \"first\" or \"last\", got \"{value}\"")]
    BadDirection { value: String },
    #[error("mm_resolve argument 2 (criterion) must not be empty")]
    EmptyCriterion,
}

fn parse_node_id(position: usize, name: &'static str, raw: &str) -> Result<NodeId, PolicyError> {
    let value: i64 = raw
        .trim()
        .parse()
        .map_err(|_| PolicyError::NodeIdNotInteger {
            position,
            name,
            value: raw.to_string(),
        })?;
    if !(MIN_NODE_ID..=MAX_NODE_ID).contains(&value) {
        return Err(PolicyError::NodeIdOutOfRange {
            position,
            name,
            value,
        });
    }
    Ok(value as NodeId)
}

impl Policy {
    /// Parses the trigger's arguments exactly as PostgreSQL hands them over (all text).
    pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<Policy, PolicyError> {
        let args: Vec<&str> = args.iter().map(|a| a.as_ref()).collect();
        // The optional preferred node, then the delta columns.
        let fixed = match args.get(3) {
            Some(a) if !a.starts_with(DELTA_PREFIX) => 4,
            _ => 3,
        };
        if args.len() < 3 {
            return Err(PolicyError::WrongArgCount { got: args.len() });
        }
        let mut delta_columns: Vec<String> = Vec::new();
        for (i, arg) in args.iter().enumerate().skip(fixed) {
            match arg.strip_prefix(DELTA_PREFIX) {
                Some(column) if !column.is_empty() => {
                    if delta_columns.iter().any(|c| c == column) {
                        return Err(PolicyError::DuplicateDeltaColumn {
                            column: column.to_string(),
                        });
                    }
                    delta_columns.push(column.to_string());
                }
                _ => {
                    return Err(PolicyError::BadDeltaArgument {
                        position: i + 1,
                        value: arg.to_string(),
                    })
                }
            }
        }
        let node_id = parse_node_id(1, "node_id", args[0])?;
        let criterion_raw = args[1].trim();
        if criterion_raw.is_empty() {
            return Err(PolicyError::EmptyCriterion);
        }
        let is_nodeid = criterion_raw.eq_ignore_ascii_case("nodeid");
        let preferred_node = match fixed {
            4 => Some(parse_node_id(4, "preferred_node", args[3])?),
            _ => None,
        };
        let (criterion, direction) = if is_nodeid {
            let winner = parse_node_id(3, "winning node", args[2])?;
            (Criterion::NodeId { winner }, Direction::Last)
        } else {
            let direction = match args[2].trim().to_ascii_lowercase().as_str() {
                "first" => Direction::First,
                "last" => Direction::Last,
                _ => {
                    return Err(PolicyError::BadDirection {
                        value: args[2].to_string(),
                    });
                }
            };
            let criterion = if criterion_raw.eq_ignore_ascii_case("last_xacttime") {
                Criterion::LastXactTime
            } else if criterion_raw.eq_ignore_ascii_case("last_stattime") {
                Criterion::LastStatTime
            } else {
                // Column names are matched exactly, as PostgreSQL stores them.
                Criterion::Column(criterion_raw.to_string())
            };
            (criterion, direction)
        };
        Ok(Policy {
            node_id,
            criterion,
            direction,
            preferred_node,
            delta_columns,
        })
    }

    /// The total order this policy puts on row versions.
    pub fn order(&self) -> VersionOrder {
        VersionOrder {
            direction: self.direction,
            winner: match self.criterion {
                Criterion::NodeId { winner } => Some(winner),
                _ => None,
            },
            preferred: self.preferred_node,
        }
    }

    /// The version of a row under this policy, from its bookkeeping columns (and the user
    /// criterion column, when there is one).
    pub fn version(&self, stamps: &RowStamps) -> Version {
        let criterion = match self.criterion {
            Criterion::LastXactTime | Criterion::NodeId { .. } => stamps.xacttime,
            Criterion::LastStatTime => stamps.stattime,
            Criterion::Column(_) => stamps.user_criterion,
        };
        Version {
            criterion,
            stattime: stamps.stattime,
            node: stamps.node,
        }
    }

    /// The version of the tombstone a local delete of a row with `old` stamps records, given the
    /// delete's own `stamps`. Under a user criterion column the tombstone keeps the deleted row's
    /// value (a delete carries no new one), so it beats exactly what it deleted and loses to a
    /// write with a newer value.
    pub fn tombstone_version(&self, old: &RowStamps, stamps: &Stamps) -> Version {
        self.local_version(stamps, old.user_criterion)
    }

    /// The version a local write on this node makes: its `stamps`, this node's id, and the user
    /// criterion value it carries (for `Criterion::Column`).
    pub fn local_version(&self, stamps: &Stamps, user_criterion: Option<Micros>) -> Version {
        self.version(&RowStamps {
            xacttime: Some(stamps.xacttime),
            stattime: Some(stamps.stattime),
            node: Some(self.node_id),
            user_criterion,
        })
    }

    /// Name of the column whose value is the criterion (for messages and for validation).
    pub fn criterion_column(&self) -> &str {
        match &self.criterion {
            Criterion::LastXactTime | Criterion::NodeId { .. } => crate::COL_XACTTIME,
            Criterion::LastStatTime => crate::COL_STATTIME,
            Criterion::Column(name) => name,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_articles_forms() {
        let p = Policy::parse(&["1", "last_xacttime", "last", "2"]).unwrap();
        assert_eq!(p.node_id, 1);
        assert_eq!(p.criterion, Criterion::LastXactTime);
        assert_eq!(p.direction, Direction::Last);
        assert_eq!(p.preferred_node, Some(2));

        let p = Policy::parse(&["3", "mod_time", "FIRST", "1"]).unwrap();
        assert_eq!(p.criterion, Criterion::Column("mod_time".into()));
        assert_eq!(p.direction, Direction::First);

        let p = Policy::parse(&["2", "nodeid", "1"]).unwrap();
        assert_eq!(p.criterion, Criterion::NodeId { winner: 1 });
        assert_eq!(p.preferred_node, None);
        assert_eq!(p.criterion_column(), crate::COL_XACTTIME);

        // The preferred node is optional (ties then go to the lower node id).
        let p = Policy::parse(&["1", "last_stattime", "last"]).unwrap();
        assert_eq!(p.criterion, Criterion::LastStatTime);
        assert_eq!(p.preferred_node, None);
    }

    #[test]
    fn rejects_bad_arguments_with_a_specific_error() {
        assert_eq!(
            Policy::parse(&["1", "last_xacttime"]),
            Err(PolicyError::WrongArgCount { got: 2 })
        );
        assert_eq!(
            Policy::parse::<&str>(&[]),
            Err(PolicyError::WrongArgCount { got: 0 })
        );
        assert!(matches!(
            Policy::parse(&["x", "last_xacttime", "last", "1"]),
            Err(PolicyError::NodeIdNotInteger { position: 1, .. })
        ));
        assert!(matches!(
            Policy::parse(&["0", "last_xacttime", "last", "1"]),
            Err(PolicyError::NodeIdOutOfRange { value: 0, .. })
        ));
        assert!(matches!(
            Policy::parse(&["1", "last_xacttime", "last", "40000"]),
            Err(PolicyError::NodeIdOutOfRange { position: 4, .. })
        ));
        assert!(matches!(
            Policy::parse(&["1", "last_xacttime", "lats", "1"]),
            Err(PolicyError::BadDirection { .. })
        ));
        assert!(matches!(
            Policy::parse(&["1", "nodeid", "last"]),
            Err(PolicyError::NodeIdNotInteger { position: 3, .. })
        ));
        assert_eq!(
            Policy::parse(&["1", " ", "last", "1"]),
            Err(PolicyError::EmptyCriterion)
        );
        assert_eq!(
            Policy::parse(&["1", "last_xacttime", "last", "2", "balance"]),
            Err(PolicyError::BadDeltaArgument {
                position: 5,
                value: "balance".into()
            })
        );
        assert_eq!(
            Policy::parse(&["1", "last_xacttime", "last", "delta=a", "delta=a"]),
            Err(PolicyError::DuplicateDeltaColumn { column: "a".into() })
        );
        assert!(matches!(
            Policy::parse(&["1", "last_xacttime", "last", "delta="]),
            Err(PolicyError::BadDeltaArgument { position: 4, .. })
        ));
    }

    #[test]
    fn delta_columns_follow_the_other_arguments() {
        let p = Policy::parse(&["1", "last_xacttime", "last", "delta=a", "delta=b c"]).unwrap();
        assert_eq!(p.preferred_node, None);
        assert_eq!(p.delta_columns, vec!["a".to_string(), "b c".to_string()]);
        let p = Policy::parse(&["1", "last_xacttime", "last", "3", "delta=bal"]).unwrap();
        assert_eq!(p.preferred_node, Some(3));
        assert_eq!(p.delta_columns, vec!["bal".to_string()]);
        assert!(Policy::parse(&["1", "last_xacttime", "last"])
            .unwrap()
            .delta_columns
            .is_empty());
    }
}
