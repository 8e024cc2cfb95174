//! `mm_conflict.subscribe`: observe the peer (`mm_conflict_core::mesh::peer_query`), check it
//! (`super::plan::check_peer`), then create the replication slot on the peer (over the peer
//! connection, in its own transaction there: so this works inside a transaction block, where
//! `CREATE SUBSCRIPTION` could not create it) and the subscription here. A failure after the slot
//! was created drops it again.

use std::cell::Cell;

use mm_conflict_core::mesh::PEER_IDENTITY_QUERY;
use mm_conflict_core::mesh::{channel_name, peer_query, subscription_sql, PeerState, Remote};
use mm_conflict_core::sql::sql_literal;
use pgrx::prelude::*;

use super::local::{check_node_id, this_node};
use super::plan::check_peer;
use super::remote::{self, Connection};
use crate::error::{MmError, OrRaise};
use crate::pg::spi::read_one;
use crate::pg::subxact::{catching, catching_error};

fn null(argument: &str) -> MmError {
    MmError::NullArgument {
        function: "subscribe()".into(),
        argument: argument.into(),
    }
}

fn spi_failed(e: pgrx::spi::Error) -> ! {
    MmError::Internal {
        what: format!("SPI: {e}"),
    }
    .raise()
}

/// What the peer is, as `subscribe` must know before changing anything.
fn inspect(conn: &Connection, channel: &str) -> (PeerState, serde_json::Value) {
    let query = |sql: String| conn.run(&Remote { sql, query: true });
    let mut state: serde_json::Value =
        serde_json::from_str(&query(peer_query(channel)).unwrap_or_default()).unwrap_or_default();
    if !state["extension"].is_null() {
        let identity: serde_json::Value = query(PEER_IDENTITY_QUERY.into())
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        if let (Some(state), Some(identity)) = (state.as_object_mut(), identity.as_object()) {
            state.extend(identity.clone());
        }
    }
    let parsed = serde_json::from_value(state.clone()).unwrap_or_else(|e| {
        MmError::Internal {
            what: format!("the peer's inspection does not parse: {e}"),
        }
        .raise()
    });
    (parsed, state)
}

pub fn subscribe(
    peer: Option<i32>,
    conninfo: Option<&str>,
    copy_data: Option<bool>,
) -> Result<(), MmError> {
    crate::pg::security::require_superuser("subscribe()")?;
    let peer = peer.ok_or_else(|| null("peer_node_id"))?;
    let conninfo = conninfo.ok_or_else(|| null("conninfo"))?;
    let copy_data = copy_data.ok_or_else(|| null("copy_data"))?;
    let me = this_node()?;
    check_node_id(Some(i64::from(peer)))?;
    if peer == i32::from(me) {
        return Err(MmError::SubscribeToSelf { node: me.into() });
    }
    let channel = channel_name(peer.into(), me.into());

    let existing = read_one::<String>(
        "SELECT s.subconninfo FROM pg_catalog.pg_subscription s
          WHERE s.subname OPERATOR(pg_catalog.=) $1
            AND s.subdbid OPERATOR(pg_catalog.=) (SELECT oid FROM pg_catalog.pg_database
                                                   WHERE datname OPERATOR(pg_catalog.=) pg_catalog.current_database())",
        &[channel.as_str().into()],
    )
    .unwrap_or_else(|e| spi_failed(e));
    if let Some(existing) = existing {
        if existing == conninfo {
            MmError::AlreadySubscribed {
                node: me.into(),
                peer: peer.into(),
            }
            .notice();
            return Ok(());
        }
        return Err(MmError::SubscribedElsewhere {
            node: me.into(),
            peer: peer.into(),
            subscription: channel,
        });
    }

    remote::require_dblink("subscribe()");
    let conn = Connection::open(
        "mm_conflict_subscribe".into(),
        conninfo,
        &format!("node {peer}"),
    );
    let slot_created = Cell::new(false);
    let outcome = catching_error(|| {
        let (state, raw) = inspect(&conn, &channel);
        if check_peer(peer.into(), &channel, &state).or_raise() {
            // Left behind by an interrupted subscribe() or drop_mesh(): no subscription uses it.
            conn.drop_slot(&channel);
        }
        conn.run(&Remote {
            sql: format!(
                "SELECT lsn FROM pg_catalog.pg_create_logical_replication_slot({}, 'pgoutput')",
                sql_literal(&channel)
            ),
            query: true,
        });
        slot_created.set(true);
        let create = subscription_sql(
            &channel,
            conninfo,
            copy_data,
            i64::from(pg_sys::PG_VERSION_NUM),
        );
        // Raised again without the statement (and its conninfo) in the error context.
        if let Err(caught) = catching_error(|| Spi::run(&create)) {
            caught.raise_as(
                format!("cannot subscribe to node {peer}: {}", caught.message),
                caught.detail.clone(),
            );
        }
        let name = raw["node_name"]
            .as_str()
            .map_or_else(|| format!("node{peer}"), str::to_string);
        Spi::run_with_args(
            "INSERT INTO mm_conflict.peer(node_id, node_name, subscription) VALUES ($1, $2, $3)
             ON CONFLICT (node_id) DO UPDATE SET node_name = excluded.node_name,
                                                 subscription = excluded.subscription",
            &[(peer as i16).into(), name.into(), channel.as_str().into()],
        )
        .unwrap_or_else(|e| spi_failed(e));
    });
    if let Err(caught) = outcome {
        let mut detail = caught.detail.clone();
        if slot_created.get() && catching(|| conn.drop_slot(&channel)).is_err() {
            let line = format!(
                "Replication slot {channel} on node {peer} could not be dropped; drop it there by hand."
            );
            detail = Some(match detail.filter(|d| !d.is_empty()) {
                Some(d) => format!("{d}\n{line}"),
                None => line,
            });
        }
        conn.close();
        caught.raise_as(caught.message.clone(), detail);
    }
    conn.close();
    Ok(())
}

/// Drops this node's subscription to `peer` (transactional: the slot is detached first) and its
/// peer row, then the slot on the peer, over a connection of its own. Returns what could not be
/// done (the slot on a peer that cannot be reached), or `None`.
pub fn unsubscribe(peer: i64) -> Option<String> {
    let me = i64::from(this_node().or_raise());
    let channel = channel_name(peer, me);
    let found = read_one::<String>(
        "SELECT s.subconninfo || E'\\n' || COALESCE(s.subslotname::pg_catalog.text, '')
           FROM pg_catalog.pg_subscription s
          WHERE s.subname OPERATOR(pg_catalog.=) $1
            AND s.subdbid OPERATOR(pg_catalog.=) (SELECT oid FROM pg_catalog.pg_database
                                                   WHERE datname OPERATOR(pg_catalog.=) pg_catalog.current_database())",
        &[channel.as_str().into()],
    )
    .unwrap_or_else(|e| spi_failed(e));
    Spi::run_with_args(
        "DELETE FROM mm_conflict.peer WHERE node_id OPERATOR(pg_catalog.=) $1",
        &[(peer as i16).into()],
    )
    .unwrap_or_else(|e| spi_failed(e));
    let (conninfo, slot) = found?
        .rsplit_once('\n')
        .map(|(c, s)| (c.to_string(), s.to_string()))?;
    Spi::run(&mm_conflict_core::membership::drop_subscription_block(
        &channel,
    ))
    .unwrap_or_else(|e| spi_failed(e));
    if slot.is_empty() {
        return None;
    }
    remote::require_dblink("drop_mesh()");
    let dropped = catching(|| {
        let conn = Connection::open(
            "mm_conflict_unsubscribe".into(),
            &conninfo,
            &format!("node {peer}"),
        );
        conn.drop_slot(&slot);
        conn.close();
    });
    dropped.err().map(|message| {
        format!(
            "replication slot {slot} on node {peer} was not dropped ({message}); drop it there with SELECT pg_drop_replication_slot({})",
            sql_literal(&slot)
        )
    })
}

/// [`unsubscribe`] from every peer; what could not be done.
pub fn unsubscribe_all() -> Vec<String> {
    let peers: Vec<i64> = Spi::connect(|client| {
        client
            .select(
                "SELECT node_id FROM mm_conflict.peer ORDER BY node_id",
                None,
                &[],
            )?
            .map(|row| Ok(i64::from(row.get::<i16>(1)?.unwrap_or_default())))
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .unwrap_or_else(|e| spi_failed(e));
    peers.into_iter().filter_map(unsubscribe).collect()
}
