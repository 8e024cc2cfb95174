//! The plan of `mm_conflict.repair`: which keys to compare again, and in which rounds to take
//! winners from peers and send them winners, until a round writes nothing.
//!
//! Written against [`RepairMesh`], what the repairing node observes of its peers and the two ways
//! it can write: PostgreSQL implements it over dblink in production (`src/verify/repair.rs`), and
//! the convergence property test over its in-memory mesh, so that the test drives the rounds that
//! ship. The planner never reaches a node itself: it decides, from what the mesh reports, which
//! [`Transfer`]s come next.
//!
//! The steps:
//! 1. the keys where each peer differs from this node ([`RepairMesh::differing`]);
//! 2. what replication is carrying arrives ([`RepairMesh::wait_for_sync`]), so that only keys
//!    that still differ are written, not changes about to be delivered;
//! 3. the keys that still differ with some peer ([`RepairMesh::judge`]);
//! 4. rounds over the peers in turn: keys where the peer wins (or where both hold one version
//!    and the peer wrote it) are taken from it, the others sent to it; until a round writes
//!    nothing. One pass is not enough: a node may learn a winner from a later peer, or hold a
//!    tombstone no other comparison looked at (the property test found both).
//!
//! Nothing is written before step 4: waiting in step 2 with keys locked could wait on this node's
//! own apply workers.

use std::collections::BTreeSet;

use crate::decide::RepairWinner;

/// How one key differs between the repairing node and a peer (`table_diff`'s verdict).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judged<K> {
    pub key: K,
    pub winner: RepairWinner,
    /// The peer's state was written by the peer itself (its row's stamps name it): for an
    /// [`RepairWinner::Equal`] key, the writer's content is the one every node gets.
    pub peer_wrote: bool,
}

/// Which way a transfer copies keys' states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// The peer's states are written on the repairing node.
    Take,
    /// The repairing node's states are written on the peer.
    Send,
}

/// One write of the plan: the states of `keys` copied between the repairing node and peer
/// `peer` (an index into the mesh's peers), each resolved by the trigger as a replicated change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer<K> {
    pub peer: usize,
    pub way: Way,
    /// Rows whose version the receiving node already holds are written too (their content
    /// differs: see [`RepairWinner::Equal`]).
    pub same_version: bool,
    pub keys: Vec<K>,
}

/// What the repairing node sees of the mesh, and what it can do there.
pub trait RepairMesh {
    /// A row's key, as both sides name it (PostgreSQL: the binary key form of tombstones).
    type Key: Clone + Ord;
    type Error;

    /// The number of peers; they are named by index, `0..peers()`.
    fn peers(&self) -> usize;
    /// The keys whose rows differ between this node and peer `peer` (a row on one side only, or
    /// rows that differ in version or content).
    fn differing(&mut self, peer: usize) -> Result<Vec<Self::Key>, Self::Error>;
    /// Waits until what replication carries has arrived, here and on every peer.
    fn wait_for_sync(&mut self) -> Result<(), Self::Error>;
    /// Those of `keys` that differ with peer `peer`, and who wins each.
    fn judge(
        &mut self,
        peer: usize,
        keys: &[Self::Key],
    ) -> Result<Vec<Judged<Self::Key>>, Self::Error>;
    /// Runs one transfer.
    fn transfer(&mut self, transfer: &Transfer<Self::Key>) -> Result<(), Self::Error>;
    /// Called after each transfer with the number of distinct keys written so far.
    fn progress(&mut self, _keys_written: usize) {}
}

/// The transfers of one round with peer `peer`, from the keys judged against it, at most `batch`
/// keys each: first what is taken (winners, then same-version rows the peer wrote), then what is
/// sent.
pub fn round<K: Clone>(peer: usize, judged: &[Judged<K>], batch: usize) -> Vec<Transfer<K>> {
    let batch = batch.max(1);
    let kinds = [
        (Way::Take, false),
        (Way::Take, true),
        (Way::Send, false),
        (Way::Send, true),
    ];
    let mut transfers = Vec::new();
    for (way, same_version) in kinds {
        let keys: Vec<K> = judged
            .iter()
            .filter(|j| kind_of(j) == (way, same_version))
            .map(|j| j.key.clone())
            .collect();
        for chunk in keys.chunks(batch) {
            transfers.push(Transfer {
                peer,
                way,
                same_version,
                keys: chunk.to_vec(),
            });
        }
    }
    transfers
}

/// Which way a judged key is copied, and whether as a same-version write.
fn kind_of<K>(judged: &Judged<K>) -> (Way, bool) {
    match judged.winner {
        RepairWinner::Peer => (Way::Take, false),
        RepairWinner::Equal if judged.peer_wrote => (Way::Take, true),
        RepairWinner::Local => (Way::Send, false),
        RepairWinner::Equal => (Way::Send, true),
    }
}

/// Runs a repair over `mesh` from the repairing node; returns the distinct keys written.
pub fn repair<M: RepairMesh>(mesh: &mut M, batch: usize) -> Result<usize, M::Error> {
    let peers = mesh.peers();
    // 1. Where each peer differs.
    let mut suspects: Vec<Vec<M::Key>> = Vec::with_capacity(peers);
    for peer in 0..peers {
        suspects.push(mesh.differing(peer)?);
    }
    if suspects.iter().all(Vec::is_empty) {
        return Ok(0);
    }
    // 2. What is on its way arrives.
    mesh.wait_for_sync()?;
    // 3. What still differs.
    let mut confirmed = BTreeSet::new();
    for (peer, keys) in suspects.iter().enumerate() {
        if !keys.is_empty() {
            confirmed.extend(mesh.judge(peer, keys)?.into_iter().map(|j| j.key));
        }
    }
    let confirmed: Vec<M::Key> = confirmed.into_iter().collect();
    // 4. Rounds, until one writes nothing (at most one more than there are peers: each round
    //    carries a winner at least one node further).
    let mut written = BTreeSet::new();
    for _ in 0..=peers {
        if confirmed.is_empty() {
            break;
        }
        let mut wrote = false;
        for peer in 0..peers {
            let judged = mesh.judge(peer, &confirmed)?;
            for transfer in round(peer, &judged, batch) {
                mesh.transfer(&transfer)?;
                wrote = true;
                written.extend(transfer.keys.iter().cloned());
                mesh.progress(written.len());
            }
        }
        if !wrote {
            break;
        }
    }
    Ok(written.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(key: u8, winner: RepairWinner, peer_wrote: bool) -> Judged<u8> {
        Judged {
            key,
            winner,
            peer_wrote,
        }
    }

    #[test]
    fn a_round_takes_first_then_sends_in_batches() {
        use RepairWinner::*;
        let judged = [
            j(1, Local, false),
            j(2, Peer, false),
            j(3, Equal, true),
            j(4, Equal, false),
            j(5, Peer, true),
            j(6, Peer, false),
        ];
        let t = |way, same_version, keys: &[u8]| Transfer {
            peer: 2,
            way,
            same_version,
            keys: keys.to_vec(),
        };
        assert_eq!(
            round(2, &judged, 2),
            vec![
                t(Way::Take, false, &[2, 5]),
                t(Way::Take, false, &[6]),
                t(Way::Take, true, &[3]),
                t(Way::Send, false, &[1]),
                t(Way::Send, true, &[4]),
            ]
        );
        assert!(round::<u8>(0, &[], 100).is_empty());
        // A batch of 0 is a batch of 1, not a loop without end.
        assert_eq!(round(0, &judged[..2], 0).len(), 2);
    }

    /// A mesh whose peers agree with each other but not with the repairing node, which never
    /// converges: the planner stops after peers + 1 rounds.
    struct Stubborn {
        judged: usize,
        transfers: usize,
        waited: bool,
    }

    impl RepairMesh for Stubborn {
        type Key = u8;
        type Error = ();
        fn peers(&self) -> usize {
            2
        }
        fn differing(&mut self, peer: usize) -> Result<Vec<u8>, ()> {
            Ok(if peer == 0 { vec![7, 9] } else { vec![] })
        }
        fn wait_for_sync(&mut self) -> Result<(), ()> {
            self.waited = true;
            Ok(())
        }
        fn judge(&mut self, _: usize, keys: &[u8]) -> Result<Vec<Judged<u8>>, ()> {
            assert!(self.waited, "judged before what was in flight arrived");
            self.judged += 1;
            Ok(keys
                .iter()
                .map(|&k| j(k, RepairWinner::Local, false))
                .collect())
        }
        fn transfer(&mut self, _: &Transfer<u8>) -> Result<(), ()> {
            self.transfers += 1;
            Ok(())
        }
    }

    #[test]
    fn rounds_are_bounded_and_nothing_is_judged_before_the_wait() {
        let mut mesh = Stubborn {
            judged: 0,
            transfers: 0,
            waited: false,
        };
        assert_eq!(repair(&mut mesh, 100), Ok(2));
        // One confirming judgement (only peer 0 had suspects), then 3 rounds of 2 peers.
        assert_eq!(mesh.judged, 1 + 3 * 2);
        assert_eq!(mesh.transfers, 3 * 2);
    }

    struct Agreeing;

    impl RepairMesh for Agreeing {
        type Key = u8;
        type Error = &'static str;
        fn peers(&self) -> usize {
            3
        }
        fn differing(&mut self, _: usize) -> Result<Vec<u8>, &'static str> {
            Ok(vec![])
        }
        fn wait_for_sync(&mut self) -> Result<(), &'static str> {
            Err("waited though nothing differed")
        }
        fn judge(&mut self, _: usize, _: &[u8]) -> Result<Vec<Judged<u8>>, &'static str> {
            Err("judged though nothing differed")
        }
        fn transfer(&mut self, _: &Transfer<u8>) -> Result<(), &'static str> {
            Err("wrote though nothing differed")
        }
    }

    #[test]
    fn nothing_differs_nothing_happens() {
        assert_eq!(repair(&mut Agreeing, 100), Ok(0));
    }
}
