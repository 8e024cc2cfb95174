//! Row versions and the total order on them.
//!
//! A version is (criterion value, `mm_last_stattime`, origin node). Every node compares versions
//! with the same [`VersionOrder`], so every node keeps the same winner no matter in which order
//! the versions reach it: that is what makes the mesh converge.

use std::cmp::Ordering;

/// Whether the greater (`Last`) or the smaller (`First`) criterion value wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    First,
    Last,
}

/// A node id (`mm_nodeid smallint`).
pub type NodeId = i16;

/// Microseconds since 2000-01-01, PostgreSQL's internal `timestamp`/`timestamptz` representation.
pub type Micros = i64;

/// The bookkeeping values of a stored or incoming row, as read from its columns.
/// `None` is SQL NULL.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RowStamps {
    pub xacttime: Option<Micros>,
    pub stattime: Option<Micros>,
    pub node: Option<NodeId>,
    /// The user criterion column, when the policy names one.
    pub user_criterion: Option<Micros>,
}

/// One version of a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Version {
    pub criterion: Option<Micros>,
    pub stattime: Option<Micros>,
    pub node: Option<NodeId>,
}

/// The total order on versions of a table. `compare(a, b) == Greater` means "a beats b".
///
/// The steps, each deciding only when the previous ones tie:
/// 1. `nodeid` mode: a version written by the winning node beats one that is not.
/// 2. The criterion value: `Last` → greater wins, `First` → smaller wins; NULL loses to any value.
/// 3. `mm_last_stattime`, in the same direction; NULL loses.
/// 4. The preferred node's version beats another node's.
/// 5. The lower node id wins; NULL loses.
///
/// Two versions compare `Equal` only when criterion, stattime and node are all equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VersionOrder {
    pub direction: Direction,
    pub winner: Option<NodeId>,
    pub preferred: Option<NodeId>,
}

/// NULL loses to any value, whatever the direction.
fn cmp_directed(a: Option<Micros>, b: Option<Micros>, direction: Direction) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => match direction {
            Direction::Last => a.cmp(&b),
            Direction::First => b.cmp(&a),
        },
        (Some(_), None) => Ordering::Greater,
        (None, Some(_)) => Ordering::Less,
        (None, None) => Ordering::Equal,
    }
}

fn is_node(node: Option<NodeId>, which: Option<NodeId>) -> bool {
    which.is_some() && node == which
}

impl VersionOrder {
    pub fn compare(&self, a: &Version, b: &Version) -> Ordering {
        is_node(a.node, self.winner)
            .cmp(&is_node(b.node, self.winner))
            .then_with(|| cmp_directed(a.criterion, b.criterion, self.direction))
            .then_with(|| cmp_directed(a.stattime, b.stattime, self.direction))
            .then_with(|| is_node(a.node, self.preferred).cmp(&is_node(b.node, self.preferred)))
            .then_with(|| match (a.node, b.node) {
                // Lower id wins: reverse the natural order.
                (Some(x), Some(y)) => y.cmp(&x),
                (Some(_), None) => Ordering::Greater,
                (None, Some(_)) => Ordering::Less,
                (None, None) => Ordering::Equal,
            })
    }

    /// True when `a` strictly beats `b`.
    pub fn beats(&self, a: &Version, b: &Version) -> bool {
        self.compare(a, b) == Ordering::Greater
    }
}

/// Formats PostgreSQL's internal microseconds as `YYYY-MM-DD HH:MM:SS.ffffff` (UTC), for messages.
pub fn format_micros(micros: Micros) -> String {
    const DAY: i64 = 86_400_000_000;
    let days = micros.div_euclid(DAY);
    let in_day = micros.rem_euclid(DAY);
    // Civil date from days since 2000-03-01 (H. Hinnant's algorithm, shifted to PostgreSQL's epoch).
    let z = days + 10_957 + 719_468; // days since 0000-03-01
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let secs = in_day / 1_000_000;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:06}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        in_day % 1_000_000
    )
}

impl Version {
    /// `criterion = …, mm_last_stattime = …, node = …` for error details and logs.
    pub fn describe(&self, criterion_column: &str) -> String {
        let time = |t: Option<Micros>| t.map_or_else(|| "NULL".to_string(), format_micros);
        let node = self
            .node
            .map_or_else(|| "NULL".to_string(), |n| n.to_string());
        if criterion_column == crate::COL_STATTIME {
            format!("{criterion_column} = {}, node {node}", time(self.stattime))
        } else {
            format!(
                "{criterion_column} = {}, {} = {}, node {node}",
                time(self.criterion),
                crate::COL_STATTIME,
                time(self.stattime)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_postgres_microseconds() {
        assert_eq!(format_micros(0), "2000-01-01 00:00:00.000000");
        assert_eq!(format_micros(-1), "1999-12-31 23:59:59.999999");
        // 2026-11-24 00:31:45.5 UTC = 848_795_505.5 s after 2000-01-01
        assert_eq!(
            format_micros(848_795_505_500_000),
            "2026-11-24 00:31:45.500000"
        );
        assert_eq!(
            format_micros(5_184_000_000_000),
            "2000-03-01 00:00:00.000000"
        );
    }

    fn domain() -> Vec<Version> {
        let times = [None, Some(-1), Some(0), Some(1)];
        let nodes = [None, Some(1), Some(2), Some(3)];
        let mut out = Vec::new();
        for c in times {
            for s in times {
                for n in nodes {
                    out.push(Version {
                        criterion: c,
                        stattime: s,
                        node: n,
                    });
                }
            }
        }
        out
    }

    fn orders() -> Vec<VersionOrder> {
        let mut out = Vec::new();
        for direction in [Direction::First, Direction::Last] {
            for winner in [None, Some(1), Some(3)] {
                for preferred in [None, Some(2), Some(3)] {
                    out.push(VersionOrder {
                        direction,
                        winner,
                        preferred,
                    });
                }
            }
        }
        out
    }

    /// Exhaustive over a small domain: the order is total, antisymmetric and transitive, and
    /// only identical versions tie.
    #[test]
    fn order_is_total_and_equal_only_for_identical_versions() {
        let dom = domain();
        for order in orders() {
            for a in &dom {
                assert_eq!(order.compare(a, a), Ordering::Equal);
                for b in &dom {
                    let ab = order.compare(a, b);
                    assert_eq!(ab, order.compare(b, a).reverse(), "{order:?} {a:?} {b:?}");
                    assert_eq!(ab == Ordering::Equal, a == b, "{order:?} {a:?} {b:?}");
                    for c in &dom {
                        if ab != Ordering::Less && order.compare(b, c) != Ordering::Less {
                            assert_ne!(order.compare(a, c), Ordering::Less, "{a:?} {b:?} {c:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn each_step_decides_in_its_turn() {
        let v = |c, s, n| Version {
            criterion: Some(c),
            stattime: Some(s),
            node: Some(n),
        };
        let last = VersionOrder {
            direction: Direction::Last,
            winner: None,
            preferred: Some(2),
        };
        let first = VersionOrder {
            direction: Direction::First,
            ..last
        };
        // criterion
        assert!(last.beats(&v(5, 0, 3), &v(4, 9, 2)));
        assert!(first.beats(&v(4, 9, 3), &v(5, 0, 2)));
        // stattime, same direction
        assert!(last.beats(&v(5, 2, 3), &v(5, 1, 2)));
        assert!(first.beats(&v(5, 1, 3), &v(5, 2, 2)));
        // preferred node
        assert!(last.beats(&v(5, 1, 2), &v(5, 1, 1)));
        // lower node id among the others
        assert!(last.beats(&v(5, 1, 1), &v(5, 1, 3)));
        // NULL loses in both directions
        let null_crit = Version {
            criterion: None,
            stattime: Some(99),
            node: Some(2),
        };
        assert!(last.beats(&v(0, 0, 3), &null_crit));
        assert!(first.beats(&v(0, 0, 3), &null_crit));
        // nodeid mode: the winner beats a later write of another node
        let nodeid = VersionOrder {
            direction: Direction::Last,
            winner: Some(3),
            preferred: None,
        };
        assert!(nodeid.beats(&v(1, 1, 3), &v(100, 100, 1)));
        assert!(nodeid.beats(&v(100, 100, 1), &v(1, 1, 2)));
    }
}
