//! `mm_conflict.repair`: the planner of `mm_conflict_core::repair` (the same one the convergence
//! property test drives over its in-memory mesh) run on this node against its peers. Comparing
//! is `table_diff`'s ([`super::compare`], over the same dblink connections); writing is
//! [`super::diff::apply`] here and `_repair_apply` on a peer, so every write is resolved by the
//! trigger as a replicated change. Each step reads under a fresh snapshot ([`snapshot::fresh`]):
//! after the wait for replication, and after each transfer, it sees what changed meanwhile.

use std::time::{Duration, Instant};

use mm_conflict_core::repair::{self, Judged, RepairMesh, Transfer, Way};
use pgrx::PgRelation;

use super::compare::Comparison;
use super::diff;
use crate::error::MmError;
use crate::mesh::local::this_node;
use crate::mesh::remote::{self, Connection, Value};
use crate::pg::snapshot;

/// Keys per transfer: one statement each way.
const BATCH: usize = 100;
/// How long the repair waits for what replication carries, on each node.
const SETTLE: &str = "30 seconds";
/// How often a long repair says how far it is.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

struct Peer {
    node_id: i32,
    conn: Connection,
}

/// This node and its peers, as the planner sees them.
struct PgMesh<'a> {
    rel: &'a PgRelation,
    /// The table's stable name, as peers find it.
    table: String,
    peers: Vec<Peer>,
    noticed: Instant,
}

fn spi_failed(e: pgrx::spi::Error) -> MmError {
    MmError::Internal {
        what: format!("SPI: {e}"),
    }
}

impl PgMesh<'_> {
    fn compare(&self, peer: usize) -> Comparison<'_> {
        let p = &self.peers[peer];
        Comparison::new(self.rel, &p.conn, p.node_id)
    }
}

impl RepairMesh for PgMesh<'_> {
    type Key = Vec<u8>;
    type Error = MmError;

    fn peers(&self) -> usize {
        self.peers.len()
    }

    fn differing(&mut self, peer: usize) -> Result<Vec<Vec<u8>>, MmError> {
        let differing = snapshot::fresh(|| self.compare(peer).differing(None))?;
        Ok(differing.into_iter().map(|d| d.key).collect())
    }

    fn wait_for_sync(&mut self) -> Result<(), MmError> {
        // As replication would: a node that is not in sync within the time is repaired anyway
        // (the keys are judged again, and a version that arrives later still wins where it must).
        crate::pg::spi::read_one::<bool>(
            "SELECT mm_conflict.wait_for_sync($1::pg_catalog.interval)",
            &[SETTLE.into()],
        )
        .map_err(spi_failed)?;
        for peer in &self.peers {
            peer.conn.call("wait_for_sync", &[Value::Interval(SETTLE)]);
        }
        Ok(())
    }

    fn judge(&mut self, peer: usize, keys: &[Vec<u8>]) -> Result<Vec<Judged<Vec<u8>>>, MmError> {
        let node = self.peers[peer].node_id;
        let judged = snapshot::fresh(|| self.compare(peer).judged(Some(keys)))?;
        Ok(judged
            .into_iter()
            .map(|j| Judged {
                key: j.key,
                winner: j.winner,
                peer_wrote: j.peer_node.map(i32::from) == Some(node),
            })
            .collect())
    }

    fn transfer(&mut self, t: &Transfer<Vec<u8>>) -> Result<(), MmError> {
        let peer = &self.peers[t.peer];
        match t.way {
            Way::Take => {
                let items = peer
                    .conn
                    .call(
                        "_repair_items",
                        &[Value::Table(&self.table), Value::Keys(&t.keys)],
                    )
                    .unwrap_or_else(|| "[]".into());
                snapshot::fresh(|| diff::apply(self.rel, &items, t.same_version))?;
            }
            Way::Send => {
                let items = snapshot::fresh(|| diff::items(self.rel, t.keys.clone()))?;
                peer.conn.call(
                    "_repair_apply",
                    &[
                        Value::Table(&self.table),
                        Value::Text(&items),
                        Value::Bool(t.same_version),
                    ],
                );
            }
        }
        Ok(())
    }

    fn progress(&mut self, keys_written: usize) {
        if self.noticed.elapsed() > PROGRESS_EVERY {
            MmError::RepairProgress {
                table: self.table.clone(),
                keys: keys_written as i64,
            }
            .notice();
            self.noticed = Instant::now();
        }
    }
}

/// Reconciles `rel` across the mesh from this node (README "Verify and repair"); returns the
/// keys written. The caller (`api`'s `repair`) has checked that the role is a superuser.
pub fn run(rel: &PgRelation) -> Result<i64, MmError> {
    this_node()?;
    let table = crate::pg::relation::identity(rel);
    let peers = remote::peers();
    if peers.is_empty() {
        return Ok(0);
    }
    remote::require_dblink("repair()");
    let peers = peers
        .into_iter()
        .map(|p| Peer {
            conn: Connection::open(
                format!("mm_conflict_repair_{}", p.node_id),
                &p.conninfo,
                &format!("node {}", p.node_id),
            ),
            node_id: p.node_id,
        })
        .collect();
    let mut mesh = PgMesh {
        rel,
        table,
        peers,
        noticed: Instant::now(),
    };
    let written = repair::repair(&mut mesh, BATCH)?;
    for peer in mesh.peers {
        peer.conn.close();
    }
    Ok(written as i64)
}
