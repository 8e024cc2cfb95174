//! Node-safe sequences: the values each node draws from a sequence are made disjoint from every
//! other node's by staggering: every node steps by the same increment and starts at its own
//! residue (node k draws only values ≡ k modulo the step). No coordination at insert time, and a
//! node that joins later takes its own residue.
//!
//! The step depends on how many values the key can hold: `bigint` steps by 32768, so every node id
//! (1..32767) has its residue and each node still has 2^48 values; `integer` steps by 128, which
//! allows node ids up to 127 and leaves each node about 16.7 million values; `smallint` cannot be
//! made node-safe usefully.

/// The increment of a staggered `bigint` sequence: every node id has a residue.
pub const BIGINT_STEP: i64 = 32768;
/// The increment of a staggered `integer` sequence: node ids 1..127.
pub const INTEGER_STEP: i64 = 128;

/// Why a sequence cannot be made node-safe for a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unsafe {
    /// The values fit in a `smallint`: 32767 values cannot be shared out usefully.
    TooSmall,
    /// The node id has no residue under the type's step (an `integer` key and node id ≥ 128).
    NodeIdTooLarge { node_id: i64, step: i64 },
    /// A descending sequence.
    Descending,
}

/// The step for a sequence whose values must fit in `max` (the smaller of the sequence's
/// MAXVALUE and the column type's largest value).
pub fn step_for(max: i64) -> Result<i64, Unsafe> {
    if max > i64::from(i32::MAX) {
        Ok(BIGINT_STEP)
    } else if max > i64::from(i16::MAX) {
        Ok(INTEGER_STEP)
    } else {
        Err(Unsafe::TooSmall)
    }
}

/// Whether a sequence stepping by `increment` and at `last` already draws node `node_id`'s values.
pub fn is_staggered(node_id: i64, increment: i64, step: i64, last: i64) -> bool {
    increment == step && last.rem_euclid(step) == node_id.rem_euclid(step)
}

/// The first value node `node_id` draws after the sequence is staggered by `step`: the smallest
/// value above `floor` (the sequence's last value, or the largest value already in the column)
/// that is ≡ `node_id` modulo `step`.
pub fn restart_value(node_id: i64, step: i64, floor: i64) -> i64 {
    let base = floor - floor.rem_euclid(step) + node_id;
    if base > floor {
        base
    } else {
        base + step
    }
}

/// What to do with a sequence for node `node_id`, whose value drawn last is `last` (or the one
/// before its next): `Ok(None)` when it is staggered already, `Ok(Some((step, restart)))` to
/// stagger it, or why it cannot be.
pub fn plan(
    node_id: i64,
    increment: i64,
    max: i64,
    last: i64,
    floor: i64,
) -> Result<Option<(i64, i64)>, Unsafe> {
    if increment < 0 {
        return Err(Unsafe::Descending);
    }
    let step = step_for(max)?;
    if node_id >= step {
        return Err(Unsafe::NodeIdTooLarge { node_id, step });
    }
    // Staggered already, and its next value is above every value in the column.
    if is_staggered(node_id, increment, step, last) && last.saturating_add(step) > floor {
        return Ok(None);
    }
    Ok(Some((step, restart_value(node_id, step, floor.max(last)))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_draws_its_own_residue() {
        for node in [1, 2, 3, 127, 32767] {
            let v = restart_value(node, BIGINT_STEP, 1000);
            assert!(v > 1000);
            assert_eq!(v % BIGINT_STEP, node);
            assert!(v - 1000 <= BIGINT_STEP);
        }
        assert_eq!(restart_value(1, 128, 0), 1);
        assert_eq!(restart_value(1, 128, 1), 129);
        assert_eq!(restart_value(3, 128, 130), 131);
        assert_eq!(restart_value(2, 128, 130), 258);
    }

    #[test]
    fn values_of_two_nodes_never_meet() {
        let step = INTEGER_STEP;
        let a: std::collections::HashSet<i64> = (0..500)
            .map(|i| restart_value(1, step, 77) + i * step)
            .collect();
        let b: std::collections::HashSet<i64> = (0..500)
            .map(|i| restart_value(2, step, 5000) + i * step)
            .collect();
        assert!(a.is_disjoint(&b));
    }

    #[test]
    fn plans_by_type_and_node() {
        // bigserial, fresh: restart at the node's residue above the last value.
        assert_eq!(plan(2, 1, i64::MAX, 1, 0), Ok(Some((BIGINT_STEP, 2))));
        // Already staggered, and above every value in the column: nothing to do (also right
        // after a restart, before its first value is drawn).
        assert_eq!(plan(2, BIGINT_STEP, i64::MAX, 2 + BIGINT_STEP, 5), Ok(None));
        assert_eq!(plan(2, BIGINT_STEP, i64::MAX, 2 - BIGINT_STEP, 1), Ok(None));
        // Staggered, but rows were copied in above it: restart above them.
        assert_eq!(
            plan(2, BIGINT_STEP, i64::MAX, 2, 40000),
            Ok(Some((BIGINT_STEP, 2 * BIGINT_STEP + 2)))
        );
        // serial: step 128, node ids up to 127.
        assert_eq!(
            plan(5, 1, i64::from(i32::MAX), 9, 0),
            Ok(Some((INTEGER_STEP, 133)))
        );
        assert_eq!(
            plan(200, 1, i64::from(i32::MAX), 9, 0),
            Err(Unsafe::NodeIdTooLarge {
                node_id: 200,
                step: INTEGER_STEP
            })
        );
        assert_eq!(plan(1, 1, i64::from(i16::MAX), 1, 0), Err(Unsafe::TooSmall));
        assert_eq!(plan(1, -1, i64::MAX, 1, 0), Err(Unsafe::Descending));
    }
}
