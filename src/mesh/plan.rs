//! The checks of what the mesh functions found on a node before they change anything
//! (`create_mesh`: [`check_node`]; `subscribe`: [`check_peer`]), as mm_conflict's errors. The
//! plans themselves are pure and live in `mm_conflict_core::mesh`, re-exported here.

pub use mm_conflict_core::mesh::*;

use crate::error::MmError;

/// Whether `create_mesh` may set up node `id` as it is.
pub fn check_node(state: &NodeState, id: i64) -> Result<(), MmError> {
    if !state.superuser {
        return Err(MmError::RemoteNotSuperuser);
    }
    if state.wal_level != "logical" {
        return Err(MmError::RemoteWalLevel {
            wal_level: state.wal_level.clone(),
        });
    }
    if state.version < 150_000 {
        return Err(MmError::RemoteTooOld {
            version: state.version,
        });
    }
    if !state.available {
        return Err(MmError::RemoteWithoutPackage);
    }
    if let Some(table) = state.missing.first() {
        return Err(MmError::RemoteTableMissing {
            table: table.clone(),
        });
    }
    match state.node_id {
        Some(node_id) if node_id != id => Err(MmError::RemoteIsAnotherNode { node_id }),
        _ => Ok(()),
    }
}

/// Whether this node may subscribe to `state` as node `peer`. `Ok(true)`: a replication slot of
/// this name is left over on the peer (an interrupted `subscribe` or `drop_mesh`) and no
/// subscriber uses it: drop it first.
pub fn check_peer(peer: i64, channel: &str, state: &PeerState) -> Result<bool, MmError> {
    if state.extension.is_none() {
        return Err(MmError::PeerWithoutExtension { peer });
    }
    if state.wal_level != "logical" {
        return Err(MmError::PeerWalLevel {
            peer,
            wal_level: state.wal_level.clone(),
        });
    }
    let Some(found) = state.node_id else {
        return Err(MmError::PeerWithoutNodeId { peer });
    };
    if found != peer {
        return Err(MmError::PeerIsAnotherNode {
            found,
            expected: peer,
        });
    }
    if !state.publication {
        return Err(MmError::PeerWithoutPublication {
            peer,
            publication: PUBLICATION.into(),
        });
    }
    match state.slot_active {
        None => Ok(false),
        Some(active) if active || state.slot_database != state.database => {
            Err(MmError::SlotInUse {
                slot: channel.into(),
                peer,
            })
        }
        Some(_) => Ok(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> NodeState {
        NodeState {
            superuser: true,
            wal_level: "logical".into(),
            version: 150_004,
            extension: false,
            available: true,
            missing: vec![],
            replicated: vec![],
            publication: false,
            subscriptions: vec![],
            node_id: None,
        }
    }

    #[test]
    fn node_checks_in_order() {
        assert!(check_node(&fresh(), 1).is_ok());
        let e = |s: NodeState| check_node(&s, 1).unwrap_err().to_string();
        assert_eq!(
            e(NodeState {
                superuser: false,
                wal_level: "replica".into(),
                ..fresh()
            }),
            "the role of this conninfo is not a superuser there"
        );
        assert_eq!(
            e(NodeState {
                wal_level: "replica".into(),
                ..fresh()
            }),
            "wal_level is replica, not logical"
        );
        assert!(e(NodeState {
            version: 140_000,
            ..fresh()
        })
        .contains("too old"));
        assert!(e(NodeState {
            missing: vec!["public.mm".into()],
            ..fresh()
        })
        .contains("public.mm"));
        assert!(e(NodeState {
            node_id: Some(3),
            ..fresh()
        })
        .contains("already node 3"));
        assert!(check_node(
            &NodeState {
                node_id: Some(1),
                ..fresh()
            },
            1
        )
        .is_ok());
    }

    #[test]
    fn peers_are_checked() {
        let ok = PeerState {
            extension: Some("0.2.0".into()),
            wal_level: "logical".into(),
            node_id: Some(2),
            node_name: Some("b".into()),
            publication: true,
            slot_active: None,
            slot_database: None,
            database: Some("db".into()),
        };
        assert!(matches!(check_peer(2, "c", &ok), Ok(false)));
        assert!(matches!(
            check_peer(3, "c", &ok),
            Err(MmError::PeerIsAnotherNode {
                found: 2,
                expected: 3
            })
        ));
        let leftover = PeerState {
            slot_active: Some(false),
            slot_database: Some("db".into()),
            ..ok.clone()
        };
        assert!(matches!(check_peer(2, "c", &leftover), Ok(true)));
        let busy = PeerState {
            slot_active: Some(true),
            ..leftover
        };
        assert!(matches!(
            check_peer(2, "c", &busy),
            Err(MmError::SlotInUse { .. })
        ));
    }
}
