//! Delta (commutative) columns: counters that keep every increment.
//!
//! Last-writer-wins keeps one version of a row; for a balance that two nodes change at once it
//! loses one of the changes. A column declared a delta column is instead kept as a state-based
//! counter: the row carries, in the bookkeeping column `mm_delta`, each node's own running
//! contribution to each delta column, with a per-node sequence number. A node changes only its own
//! entry (an UPDATE adds new − old to it, an INSERT starts it at the inserted value), and two
//! states are merged by taking, for every node, the entry with the higher sequence number. The
//! merge is commutative, associative and idempotent, so every node ends with the same state
//! whatever order, duplicates and relayed copies the changes arrive in, and the column holds the
//! sum of the entries: the sum of every change made to it.
//!
//! A DELETE ends the row's *incarnation*. A later INSERT of the key starts a new one, named by the
//! version of the key's tombstone it was written over; the merge of two states of different
//! incarnations keeps the later one whole, so increments still in flight for a deleted row never
//! reach the row that replaced it.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::version::{NodeId, Version, VersionOrder};

/// The node id of the values a row held before its delta columns were declared (no node writes
/// it: node ids start at 1).
pub const BASE_NODE: NodeId = 0;

/// Why a delta value or state could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// A value that is not an exact number (`NaN`, `Infinity`).
    #[error("\"{0}\" is not a finite number")]
    NotFinite(String),
    /// A sum or difference beyond 38 significant digits.
    #[error("a sum of delta values is out of range")]
    OutOfRange,
    /// An `mm_delta` value that this version cannot read.
    #[error("malformed mm_delta value \"{0}\"")]
    Malformed(String),
}

/// An exact decimal number, `mantissa × 10^-scale`: a value of a `smallint`, `integer`, `bigint`
/// or `numeric` column (with up to 38 significant digits).
#[derive(Clone, Copy, Debug)]
pub struct Amount {
    mantissa: i128,
    scale: u32,
}

impl Amount {
    pub const ZERO: Amount = Amount {
        mantissa: 0,
        scale: 0,
    };

    pub fn from_i64(value: i64) -> Amount {
        Amount {
            mantissa: i128::from(value),
            scale: 0,
        }
    }

    /// Reads a number as PostgreSQL's output functions write it (`-12`, `3.250`).
    pub fn parse(text: &str) -> Result<Amount, DeltaError> {
        let (negative, digits) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        if int.is_empty() && frac.is_empty()
            || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        {
            return Err(DeltaError::NotFinite(text.to_string()));
        }
        let mut mantissa: i128 = 0;
        for b in int.bytes().chain(frac.bytes()) {
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|m| m.checked_add(i128::from(b - b'0')))
                .ok_or(DeltaError::OutOfRange)?;
        }
        Ok(Amount {
            mantissa: if negative { -mantissa } else { mantissa },
            scale: frac.len() as u32,
        })
    }

    fn rescaled(self, scale: u32) -> Result<i128, DeltaError> {
        10i128
            .checked_pow(scale - self.scale)
            .and_then(|f| self.mantissa.checked_mul(f))
            .ok_or(DeltaError::OutOfRange)
    }

    fn combine(
        self,
        other: Amount,
        f: fn(i128, i128) -> Option<i128>,
    ) -> Result<Amount, DeltaError> {
        let scale = self.scale.max(other.scale);
        let mantissa =
            f(self.rescaled(scale)?, other.rescaled(scale)?).ok_or(DeltaError::OutOfRange)?;
        Ok(Amount { mantissa, scale })
    }

    pub fn add(self, other: Amount) -> Result<Amount, DeltaError> {
        self.combine(other, i128::checked_add)
    }

    pub fn sub(self, other: Amount) -> Result<Amount, DeltaError> {
        self.combine(other, i128::checked_sub)
    }

    pub fn is_zero(&self) -> bool {
        self.mantissa == 0
    }

    /// The value as an integer, when it has no fractional part and fits.
    pub fn to_i64(&self) -> Option<i64> {
        let divisor = 10i128.checked_pow(self.scale)?;
        if self.mantissa % divisor != 0 {
            return None;
        }
        i64::try_from(self.mantissa / divisor).ok()
    }
}

impl PartialEq for Amount {
    fn eq(&self, other: &Amount) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Amount {}

impl PartialOrd for Amount {
    fn partial_cmp(&self, other: &Amount) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Amount {
    fn cmp(&self, other: &Amount) -> Ordering {
        let scale = self.scale.max(other.scale);
        match (self.rescaled(scale), other.rescaled(scale)) {
            (Ok(a), Ok(b)) => a.cmp(&b),
            // Beyond i128 after rescaling: compare the integer parts, then the scales.
            _ => (self.mantissa / 10i128.pow(self.scale.min(38)))
                .cmp(&(other.mantissa / 10i128.pow(other.scale.min(38))))
                .then(self.scale.cmp(&other.scale)),
        }
    }
}

impl std::fmt::Display for Amount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let digits = self.mantissa.unsigned_abs().to_string();
        let sign = if self.mantissa < 0 { "-" } else { "" };
        let scale = self.scale as usize;
        if scale == 0 {
            return write!(f, "{sign}{digits}");
        }
        let padded = format!("{digits:0>width$}", width = scale + 1);
        let (int, frac) = padded.split_at(padded.len() - scale);
        write!(f, "{sign}{int}.{frac}")
    }
}

/// One node's contribution to a row's delta columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// How many writes of that node it counts (of this incarnation).
    pub seq: u64,
    /// Its running total for each delta column, in the declaration's order.
    pub amounts: Vec<Amount>,
}

/// The state of a row's delta columns: its incarnation and each node's entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// The version of the tombstone the incarnation's first INSERT was written over (`None`: the
    /// key had none there).
    pub incarnation: Option<Version>,
    pub entries: BTreeMap<NodeId, Entry>,
}

/// Orders incarnations: none first, then by the table's version order.
fn cmp_incarnation(order: &VersionOrder, a: &Option<Version>, b: &Option<Version>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(a), Some(b)) => order.compare(a, b),
    }
}

impl Delta {
    /// The state of a row written before its delta columns were declared: its values count as
    /// [`BASE_NODE`]'s.
    pub fn base(amounts: Vec<Amount>) -> Delta {
        Delta {
            incarnation: None,
            entries: BTreeMap::from([(BASE_NODE, Entry { seq: 0, amounts })]),
        }
    }

    /// The state a local INSERT writes: a new incarnation holding only `node`'s values.
    pub fn inserted(incarnation: Option<Version>, node: NodeId, amounts: Vec<Amount>) -> Delta {
        Delta {
            incarnation,
            entries: BTreeMap::from([(node, Entry { seq: 1, amounts })]),
        }
    }

    /// The state after a local UPDATE on `node` that changed the columns by `change` (new − old).
    pub fn add(&self, node: NodeId, change: &[Amount]) -> Result<Delta, DeltaError> {
        let mut next = self.clone();
        let entry = next.entries.entry(node).or_insert_with(|| Entry {
            seq: 0,
            amounts: vec![Amount::ZERO; change.len()],
        });
        entry.seq += 1;
        entry.amounts.resize(change.len(), Amount::ZERO);
        for (amount, c) in entry.amounts.iter_mut().zip(change) {
            *amount = amount.add(*c)?;
        }
        Ok(next)
    }

    /// The merge of two states: the later incarnation whole; within one incarnation, each node's
    /// entry with the higher sequence number (equal numbers with different values, which only a
    /// write behind the trigger makes, go to the greater values, so that the merge stays
    /// commutative).
    pub fn merge(&self, other: &Delta, order: &VersionOrder) -> Delta {
        match cmp_incarnation(order, &self.incarnation, &other.incarnation) {
            Ordering::Greater => return self.clone(),
            Ordering::Less => return other.clone(),
            Ordering::Equal => {}
        }
        let mut merged = self.clone();
        for (node, theirs) in &other.entries {
            match merged.entries.get_mut(node) {
                None => {
                    merged.entries.insert(*node, theirs.clone());
                }
                Some(ours) => {
                    let later = theirs
                        .seq
                        .cmp(&ours.seq)
                        .then_with(|| theirs.amounts.cmp(&ours.amounts));
                    if later == Ordering::Greater {
                        *ours = theirs.clone();
                    }
                }
            }
        }
        merged
    }

    /// The columns' values: the sums of the entries.
    pub fn sums(&self, columns: usize) -> Result<Vec<Amount>, DeltaError> {
        let mut sums = vec![Amount::ZERO; columns];
        for entry in self.entries.values() {
            for (sum, amount) in sums.iter_mut().zip(&entry.amounts) {
                *sum = sum.add(*amount)?;
            }
        }
        Ok(sums)
    }

    /// The text stored in `mm_delta`: the incarnation (`-`, or its criterion, stattime and node
    /// separated by `/`, each empty for NULL), then for each node `node:seq:amount amount...`;
    /// fields separated by `;`. Example: `-;1:3:150 20;2:1:-5 0`.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        match &self.incarnation {
            None => text.push('-'),
            Some(v) => {
                let part = |x: Option<i64>| x.map(|x| x.to_string()).unwrap_or_default();
                let _ = write!(
                    text,
                    "{}/{}/{}",
                    part(v.criterion),
                    part(v.stattime),
                    part(v.node.map(i64::from))
                );
            }
        }
        for (node, entry) in &self.entries {
            let _ = write!(text, ";{node}:{}:", entry.seq);
            for (i, amount) in entry.amounts.iter().enumerate() {
                if i > 0 {
                    text.push(' ');
                }
                let _ = write!(text, "{amount}");
            }
        }
        text
    }

    /// Reads [`Delta::encode`]'s text for a table with `columns` delta columns (an entry with
    /// fewer values, written before columns were added to the declaration, counts 0 for them).
    pub fn decode(text: &str, columns: usize) -> Result<Delta, DeltaError> {
        let bad = || DeltaError::Malformed(text.chars().take(200).collect());
        let mut fields = text.split(';');
        let incarnation = match fields.next().ok_or_else(bad)? {
            "-" => None,
            inc => {
                let parts: Vec<&str> = inc.split('/').collect();
                let [c, s, n] = parts[..] else {
                    return Err(bad());
                };
                let num = |p: &str| -> Result<Option<i64>, DeltaError> {
                    if p.is_empty() {
                        Ok(None)
                    } else {
                        p.parse().map(Some).map_err(|_| bad())
                    }
                };
                Some(Version {
                    criterion: num(c)?,
                    stattime: num(s)?,
                    node: num(n)?
                        .map(|n| NodeId::try_from(n).map_err(|_| bad()))
                        .transpose()?,
                })
            }
        };
        let mut entries = BTreeMap::new();
        for field in fields {
            let mut parts = field.splitn(3, ':');
            let (Some(node), Some(seq), Some(values)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad());
            };
            let mut amounts = if values.is_empty() {
                Vec::new()
            } else {
                values
                    .split(' ')
                    .map(Amount::parse)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| bad())?
            };
            amounts.resize(columns, Amount::ZERO);
            entries.insert(
                node.parse().map_err(|_| bad())?,
                Entry {
                    seq: seq.parse().map_err(|_| bad())?,
                    amounts,
                },
            );
        }
        Ok(Delta {
            incarnation,
            entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::Direction;

    fn a(text: &str) -> Amount {
        Amount::parse(text).unwrap()
    }

    fn order() -> VersionOrder {
        VersionOrder {
            direction: Direction::Last,
            winner: None,
            preferred: None,
        }
    }

    fn v(t: i64) -> Version {
        Version {
            criterion: Some(t),
            stattime: Some(t),
            node: Some(1),
        }
    }

    #[test]
    fn amounts_are_exact_decimals() {
        assert_eq!(a("1.50").add(a("-0.25")).unwrap().to_string(), "1.25");
        assert_eq!(a("7").sub(a("10")).unwrap().to_string(), "-3");
        assert_eq!(a("0.001").to_string(), "0.001");
        assert_eq!(a("-0.5").to_string(), "-0.5");
        assert_eq!(a("2.00"), a("2"));
        assert!(a("-1") < a("0.5"));
        assert_eq!(a("12.000").to_i64(), Some(12));
        assert_eq!(a("12.5").to_i64(), None);
        assert_eq!(a("9223372036854775807").to_i64(), Some(i64::MAX));
        for bad in ["NaN", "Infinity", "-Infinity", "", "-", "1e5", "1.2.3"] {
            assert!(
                matches!(Amount::parse(bad), Err(DeltaError::NotFinite(_))),
                "{bad}"
            );
        }
        // Every number of 38 digits is exact; sums beyond i128 are refused.
        let big = a("99999999999999999999999999999999999999");
        assert_eq!(
            big.add(a("1")).unwrap().to_string(),
            format!("1{}", "0".repeat(38))
        );
        assert_eq!(big.add(big), Err(DeltaError::OutOfRange));
        assert_eq!(
            Amount::parse("1000000000000000000000000000000000000000"),
            Err(DeltaError::OutOfRange)
        );
    }

    #[test]
    fn merge_keeps_each_nodes_latest_entry() {
        let base = Delta::inserted(None, 1, vec![a("100")]);
        let on1 = base.add(1, &[a("-10")]).unwrap(); // node 1: 90
        let on2 = base.add(2, &[a("5")]).unwrap(); // node 2: +5
        let m = on1.merge(&on2, &order());
        assert_eq!(m.sums(1).unwrap(), vec![a("95")]);
        assert_eq!(m, on2.merge(&on1, &order()), "commutative");
        assert_eq!(
            m.merge(&on1, &order()),
            m,
            "idempotent: a relayed copy adds nothing"
        );
        assert_eq!(m.merge(&base, &order()), m, "an older state adds nothing");
        let later = m.add(2, &[a("1")]).unwrap();
        assert_eq!(m.merge(&later, &order()).sums(1).unwrap(), vec![a("96")]);
    }

    #[test]
    fn a_later_incarnation_replaces_an_earlier_one_whole() {
        let old = Delta::inserted(None, 1, vec![a("100")])
            .add(2, &[a("5")])
            .unwrap();
        let reborn = Delta::inserted(Some(v(10)), 3, vec![a("1")]);
        assert_eq!(old.merge(&reborn, &order()), reborn);
        assert_eq!(reborn.merge(&old, &order()), reborn);
        let reborn_again = Delta::inserted(Some(v(20)), 1, vec![a("2")]);
        assert_eq!(reborn.merge(&reborn_again, &order()), reborn_again);
    }

    #[test]
    fn encode_and_decode_round_trip() {
        let d = Delta::inserted(Some(v(-5)), 2, vec![a("1.50"), a("-3")])
            .add(7, &[a("0"), a("4")])
            .unwrap();
        let text = d.encode();
        assert_eq!(text, "-5/-5/1;2:1:1.50 -3;7:1:0 4");
        assert_eq!(Delta::decode(&text, 2).unwrap(), d);
        let none = Version {
            criterion: None,
            stattime: Some(3),
            node: None,
        };
        let d = Delta::inserted(Some(none), 1, vec![]);
        assert_eq!(Delta::decode(&d.encode(), 0).unwrap(), d);
        // A column added to the declaration later counts 0 in older entries.
        let widened = Delta::decode("-;1:2:5", 2).unwrap();
        assert_eq!(widened.sums(2).unwrap(), vec![a("5"), a("0")]);
        for bad in ["", "x", "-;1:2", "-;a:1:1", "1/2;1:1:1", "-;1:1:NaN"] {
            assert!(Delta::decode(bad, 1).is_err(), "{bad}");
        }
    }

    #[test]
    fn base_values_count_as_node_zero() {
        let d = Delta::base(vec![a("40")]).add(3, &[a("2")]).unwrap();
        assert_eq!(d.sums(1).unwrap(), vec![a("42")]);
        assert_eq!(d.entries[&BASE_NODE].seq, 0);
    }
}
