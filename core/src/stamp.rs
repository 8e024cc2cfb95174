//! Stamping rules for local writes: a hybrid logical clock per row.
//!
//! A local write stamps `mm_last_xacttime` with the transaction start time and `mm_last_stattime`
//! with the wall clock, but never with a value at or below the version it replaces: then it
//! uses that value + 1 µs. So under `last` a local update always supersedes what it replaced, even
//! when the row came from a node whose clock runs ahead.

use crate::version::{Micros, RowStamps};

/// The two clocks a write reads: `now()` and `clock_timestamp()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    pub xact_start: Micros,
    pub wall: Micros,
}

/// The stamps a local write gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamps {
    pub xacttime: Micros,
    pub stattime: Micros,
}

fn above(clock: Micros, floor: Option<Micros>) -> Micros {
    match floor {
        Some(f) if f >= clock => f.saturating_add(1),
        _ => clock,
    }
}

/// Stamps for a local write that replaces `superseded` (the stored row, or nothing for a fresh
/// insert).
pub fn stamp_local(clock: Clock, superseded: Option<&RowStamps>) -> Stamps {
    Stamps {
        xacttime: above(clock.xact_start, superseded.and_then(|s| s.xacttime)),
        stattime: above(clock.wall, superseded.and_then(|s| s.stattime)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_insert_uses_the_clocks() {
        let c = Clock {
            xact_start: 10,
            wall: 12,
        };
        assert_eq!(
            stamp_local(c, None),
            Stamps {
                xacttime: 10,
                stattime: 12
            }
        );
    }

    #[test]
    fn update_is_strictly_above_the_old_row_even_with_a_clock_behind() {
        let c = Clock {
            xact_start: 10,
            wall: 12,
        };
        let old = RowStamps {
            xacttime: Some(50),
            stattime: Some(5),
            node: Some(2),
            user_criterion: None,
        };
        assert_eq!(
            stamp_local(c, Some(&old)),
            Stamps {
                xacttime: 51,
                stattime: 12
            }
        );
        let same = RowStamps {
            xacttime: Some(10),
            stattime: Some(12),
            ..old
        };
        assert_eq!(
            stamp_local(c, Some(&same)),
            Stamps {
                xacttime: 11,
                stattime: 13
            }
        );
        let nulls = RowStamps::default();
        assert_eq!(
            stamp_local(c, Some(&nulls)),
            Stamps {
                xacttime: 10,
                stattime: 12
            }
        );
        let infinite = RowStamps {
            xacttime: Some(i64::MAX),
            ..old
        };
        assert_eq!(stamp_local(c, Some(&infinite)).xacttime, i64::MAX);
    }
}
