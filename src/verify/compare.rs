//! Comparing a replicated table between this node and one peer: the descent planned by
//! `mm_conflict_core::diff` run over this node's table (`super::diff`) and the peer's (its
//! `_diff_summary` / `_diff_rows` over dblink, sent before this node reads its own side so that
//! both read at once); then each differing key judged (a side without a row is compared by its
//! tombstone, if any). What `table_diff` shows and `repair` acts on.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mm_conflict_core::diff::{self as plan, Bucket, Differing, RowState, Sides};
use mm_conflict_core::{Held, RepairWinner, Version};
use pgrx::PgRelation;
use serde::Deserialize;

use super::diff;
use crate::error::MmError;
use crate::mesh::remote::{self, Connection, Value};
use crate::pg::names::bytea_from_hex;

/// How often a long comparison says how far it is.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// A table of this node and its copy on a peer.
pub struct Comparison<'a> {
    pub rel: &'a PgRelation,
    /// The table's stable name, as the peer finds it.
    pub table: String,
    pub conn: &'a Connection,
    pub peer: i32,
    noticed: Instant,
}

/// A key that differs, judged.
pub struct Judged {
    pub key: Vec<u8>,
    /// Each side's state as `table_diff` shows it (`None`: it holds nothing).
    pub local_version: Option<String>,
    pub peer_version: Option<String>,
    pub winner: RepairWinner,
    /// The node whose write the peer's state is.
    pub peer_node: Option<i16>,
}

/// The columns of the peer's `_diff_summary`, in the order of [`Bucket`]'s fields.
const BUCKET_COLUMNS: &[&str] = &["bucket", "rows", "hash"];

/// A row as the peer's `_diff_rows` sends it.
#[derive(Deserialize)]
struct PeerRow {
    pk: String,
    hash: i64,
    criterion: Option<i64>,
    stattime: Option<i64>,
    node: Option<i16>,
}
const ROW_COLUMNS: &[&str] = &["pk", "hash", "criterion", "stattime", "node"];

/// A tombstone as the peer's `_diff_tombstones` sends it.
#[derive(Deserialize)]
struct PeerTombstone {
    pk: String,
    criterion: Option<i64>,
    stattime: Option<i64>,
    node: Option<i16>,
}
const TOMBSTONE_COLUMNS: &[&str] = &["pk", "criterion", "stattime", "node"];

/// What the peer answered, parsed (an answer that does not parse is an internal error: both
/// sides run the same version).
fn parse<T: serde::de::DeserializeOwned>(json: &str, what: &str) -> Result<Vec<T>, MmError> {
    serde_json::from_str(json).map_err(|e| MmError::Internal {
        what: format!("the peer's {what} do not parse: {e}"),
    })
}

/// A key as the peer's JSON prints it (`"\\x0102"`: the remote session's `bytea_output` is hex).
fn bytea(text: &str) -> Result<Vec<u8>, MmError> {
    bytea_from_hex(text).ok_or_else(|| MmError::Internal {
        what: format!("the peer sent a key that is not hex bytea: {text:?}"),
    })
}

impl<'a> Comparison<'a> {
    pub fn new(rel: &'a PgRelation, conn: &'a Connection, peer: i32) -> Comparison<'a> {
        Comparison {
            rel,
            table: crate::pg::relation::identity(rel),
            conn,
            peer,
            noticed: Instant::now(),
        }
    }

    fn peer_rows(json: &str) -> Result<Vec<(Vec<u8>, RowState)>, MmError> {
        parse::<PeerRow>(json, "rows")?
            .into_iter()
            .map(|r| {
                Ok((
                    bytea(&r.pk)?,
                    RowState {
                        hash: r.hash,
                        version: diff::version(r.criterion, r.stattime, r.node),
                    },
                ))
            })
            .collect()
    }

    fn local_rows(
        &self,
        bits: i32,
        buckets: Vec<i64>,
        keys: Vec<Vec<u8>>,
    ) -> Result<Vec<(Vec<u8>, RowState)>, MmError> {
        Ok(diff::rows(self.rel, bits, buckets, keys)?
            .into_iter()
            .map(|r| {
                (
                    r.key,
                    RowState {
                        hash: r.hash,
                        version: r.version,
                    },
                )
            })
            .collect())
    }

    /// The keys that differ: all of them (the descent), or those among `keys`.
    pub fn differing(&mut self, keys: Option<&[Vec<u8>]>) -> Result<Vec<Differing>, MmError> {
        let Some(keys) = keys else {
            return plan::descend(self);
        };
        self.conn.send(&remote::call_rows(
            "_diff_rows",
            &[
                Value::Table(&self.table),
                Value::Int(0),
                Value::Ints(None),
                Value::Keys(keys),
            ],
            ROW_COLUMNS,
        ));
        let local = self.local_rows(0, Vec::new(), keys.to_vec())?;
        let peer = Self::peer_rows(&self.conn.receive())?;
        Ok(plan::differing_rows(local, peer))
    }

    /// The keys that differ (among `keys`, when given), each judged: a side without a row is
    /// compared by its tombstone.
    pub fn judged(&mut self, keys: Option<&[Vec<u8>]>) -> Result<Vec<Judged>, MmError> {
        let differing = self.differing(keys)?;
        let no_local: Vec<Vec<u8>> = differing
            .iter()
            .filter(|d| d.local.is_none())
            .map(|d| d.key.clone())
            .collect();
        let no_peer: Vec<Vec<u8>> = differing
            .iter()
            .filter(|d| d.peer.is_none())
            .map(|d| d.key.clone())
            .collect();
        let local_tombstones: HashMap<Vec<u8>, Version> =
            diff::tombstones(self.rel, no_local, false)?
                .into_iter()
                .map(|(key, version, _)| (key, version))
                .collect();
        let peer_tombstones: HashMap<Vec<u8>, Version> = if no_peer.is_empty() {
            HashMap::new()
        } else {
            let json = self.conn.rows(
                "_diff_tombstones",
                &[
                    Value::Table(&self.table),
                    Value::Keys(&no_peer),
                    Value::Bool(false),
                ],
                TOMBSTONE_COLUMNS,
            );
            parse::<PeerTombstone>(&json, "tombstones")?
                .into_iter()
                .map(|t| {
                    Ok((
                        bytea(&t.pk)?,
                        diff::version(t.criterion, t.stattime, t.node),
                    ))
                })
                .collect::<Result<_, MmError>>()?
        };
        let policy = diff::policy(self.rel)?;
        Ok(differing
            .into_iter()
            .map(|d| {
                let side = |row: Option<RowState>, tombstones: &HashMap<Vec<u8>, Version>| match row
                {
                    Some(row) => Held::Row(row.version),
                    None => tombstones
                        .get(&d.key)
                        .map_or(Held::Nothing, |v| Held::Tombstone(*v)),
                };
                let local = side(d.local, &local_tombstones);
                let peer = side(d.peer, &peer_tombstones);
                let (local_version, peer_version, winner) = diff::verdict(&policy, local, peer);
                let peer_node = match peer {
                    Held::Row(v) | Held::Tombstone(v) => v.node,
                    Held::Nothing => None,
                };
                Judged {
                    key: d.key,
                    local_version,
                    peer_version,
                    winner,
                    peer_node,
                }
            })
            .collect())
    }
}

impl Sides for Comparison<'_> {
    type Error = MmError;

    fn buckets(
        &mut self,
        bits: i32,
        parents: &[i64],
    ) -> Result<(Vec<Bucket>, Vec<Bucket>), MmError> {
        let parents = (bits > 0).then_some(parents);
        self.conn.send(&remote::call_rows(
            "_diff_summary",
            &[
                Value::Table(&self.table),
                Value::Int(bits.into()),
                Value::Ints(parents),
            ],
            BUCKET_COLUMNS,
        ));
        let local = diff::summary(self.rel, bits, parents.map(<[i64]>::to_vec))?
            .into_iter()
            .map(|(bucket, rows, hash)| Bucket { bucket, rows, hash })
            .collect();
        let peer = parse::<Bucket>(&self.conn.receive(), "buckets")?;
        Ok((local, peer))
    }

    #[allow(clippy::type_complexity)]
    fn rows(
        &mut self,
        bits: i32,
        buckets: &[i64],
    ) -> Result<(Vec<(Vec<u8>, RowState)>, Vec<(Vec<u8>, RowState)>), MmError> {
        self.conn.send(&remote::call_rows(
            "_diff_rows",
            &[
                Value::Table(&self.table),
                Value::Int(bits.into()),
                Value::Ints(Some(buckets)),
                Value::Keys(&[]),
            ],
            ROW_COLUMNS,
        ));
        let local = self.local_rows(bits, buckets.to_vec(), Vec::new())?;
        let peer = Self::peer_rows(&self.conn.receive())?;
        Ok((local, peer))
    }

    fn progress(&mut self, buckets: usize, rows: usize) {
        if self.noticed.elapsed() > PROGRESS_EVERY {
            MmError::DiffProgress {
                table: self.table.clone(),
                peer: self.peer.into(),
                ranges: buckets as i64,
                rows: rows as i64,
            }
            .notice();
            self.noticed = Instant::now();
        }
    }
}

/// The conninfo of peer `peer` (`not_a_peer` when this node does not subscribe to it).
pub fn peer_conninfo(peer: i32) -> Result<String, MmError> {
    remote::peers()
        .into_iter()
        .find(|p| p.node_id == peer)
        .map(|p| p.conninfo)
        .ok_or(MmError::NotAPeer { node: peer.into() })
}

/// `table_diff(tbl, peer)`: the keys whose rows differ, as (key, local version, peer version,
/// winner), unordered.
pub fn table_diff(
    rel: &PgRelation,
    peer: i32,
) -> Result<
    Vec<(
        serde_json::Value,
        Option<String>,
        Option<String>,
        &'static str,
    )>,
    MmError,
> {
    let conninfo = peer_conninfo(peer)?;
    remote::require_dblink("table_diff()");
    let conn = Connection::open(
        "mm_conflict_diff".into(),
        &conninfo,
        &format!("node {peer}"),
    );
    let judged = Comparison::new(rel, &conn, peer).judged(None)?;
    let mut out = Vec::with_capacity(judged.len());
    for j in judged {
        out.push((
            diff::key_json(rel, &j.key)?,
            j.local_version,
            j.peer_version,
            diff::winner_name(j.winner),
        ));
    }
    conn.close();
    Ok(out)
}
