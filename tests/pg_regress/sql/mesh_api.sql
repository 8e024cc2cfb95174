-- The mesh API on one cluster: identity, replicated tables, checksums, a subscription to a
-- second database of the same cluster, and the errors a user can hit, with their SQLSTATEs.
\set SHOW_CONTEXT never
\set home :DBNAME
CREATE TABLE acct(id int PRIMARY KEY, balance int);

-- Nothing works before node_init.
SELECT mm_conflict.replicate_table('acct');
\echo :LAST_ERROR_SQLSTATE
SELECT mm_conflict.node_init(0);
\echo :LAST_ERROR_SQLSTATE
SELECT mm_conflict.node_init(1, 'a');
SELECT mm_conflict.node_init(1, 'alpha');
SELECT node_id, node_name FROM mm_conflict.node;
SELECT mm_conflict.node_init(2);
\echo :LAST_ERROR_SQLSTATE

-- replicate_table adds the bookkeeping columns, the trigger (ENABLE ALWAYS, named to fire
-- first) and the publication, which also carries the tombstones.
CREATE SCHEMA "Odd Schema";
CREATE TABLE "Odd Schema"."Order Lines"(id int PRIMARY KEY, qty int);
SELECT mm_conflict.replicate_table('"Odd Schema"."Order Lines"');
SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
 WHERE attrelid = '"Odd Schema"."Order Lines"'::regclass AND attnum > 0 ORDER BY attnum;
SELECT table_name, enabled_always, published, trigger FROM mm_conflict.replicated_tables;
SELECT pubname, schemaname, tablename FROM pg_publication_tables ORDER BY 2, 3;
-- Idempotent; other arguments change the policy.
SELECT mm_conflict.replicate_table('"Odd Schema"."Order Lines"');
SELECT mm_conflict.replicate_table('"Odd Schema"."Order Lines"', 'last_stattime', 'last', 2);
SELECT trigger FROM mm_conflict.replicated_tables;
INSERT INTO "Odd Schema"."Order Lines"(id, qty) VALUES (1, 5);
SELECT id, qty, mm_islocal, mm_nodeid, mm_last_stattime IS NOT NULL AS stamped FROM "Odd Schema"."Order Lines";

-- Tables it refuses, and policies the trigger would refuse.
CREATE TABLE m_nopk(a int);
SELECT mm_conflict.replicate_table('m_nopk');
\echo :LAST_ERROR_SQLSTATE
CREATE VIEW m_view AS SELECT 1 AS a;
SELECT mm_conflict.replicate_table('m_view');
\echo :LAST_ERROR_SQLSTATE
SELECT mm_conflict.replicate_table('acct', 'no_such_column');
\echo :LAST_ERROR_SQLSTATE
SELECT mm_conflict.replicate_table('acct', 'balance');
\echo :LAST_ERROR_SQLSTATE
SELECT mm_conflict.replicate_table('acct', 'last_xacttime', 'latest');
\echo :LAST_ERROR_SQLSTATE
SELECT mm_conflict.replicate_table('acct', 'last_xacttime', 'last', 40000);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS acct_triggers FROM pg_trigger WHERE tgrelid = 'acct'::regclass;
CREATE TRIGGER mine BEFORE INSERT ON acct FOR EACH ROW EXECUTE FUNCTION mm_resolve(1, last_xacttime, last);
SELECT mm_conflict.replicate_table('acct');
\echo :LAST_ERROR_SQLSTATE
DROP TRIGGER mine ON acct;
-- A BEFORE trigger that would fire before mm_resolve gets a warning.
CREATE FUNCTION m_noop() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
CREATE TRIGGER " early" BEFORE INSERT ON acct FOR EACH ROW EXECUTE FUNCTION m_noop();
SELECT mm_conflict.replicate_table('acct');
DROP TRIGGER " early" ON acct;

-- Several inserts in one transaction: each statement releases the previous key lock quietly.
BEGIN;
INSERT INTO acct(id, balance) VALUES (1, 1);
INSERT INTO acct(id, balance) VALUES (2, 2);
COMMIT;
-- ... and across savepoints (one rolled back releases its lock; none warns).
BEGIN;
INSERT INTO "Odd Schema"."Order Lines"(id, qty) VALUES (10, 1);
SAVEPOINT a;
INSERT INTO "Odd Schema"."Order Lines"(id, qty) VALUES (11, 1);
ROLLBACK TO SAVEPOINT a;
INSERT INTO "Odd Schema"."Order Lines"(id, qty) VALUES (12, 1);
SAVEPOINT b;
INSERT INTO "Odd Schema"."Order Lines"(id, qty) VALUES (13, 1);
RELEASE SAVEPOINT b;
INSERT INTO "Odd Schema"."Order Lines"(id, qty) VALUES (14, 1);
COMMIT;
SELECT string_agg(id::text, ',' ORDER BY id) AS ids FROM "Odd Schema"."Order Lines";

-- unreplicate_table: the trigger, the publication entry and the table's tombstones go; the
-- columns and rows stay.
DELETE FROM acct WHERE id = 2;
SELECT table_name, mm_nodeid FROM mm_conflict.tombstone;
-- On a node with peers, a table still published is refused: the peers would go on sending it.
INSERT INTO mm_conflict.peer VALUES (9, 'nine', 'mm_conflict_9_to_1');
SELECT mm_conflict.unreplicate_table('acct');
\echo :LAST_ERROR_SQLSTATE
-- Once it is out of the publication (on every node, per the HINT), it is allowed.
ALTER PUBLICATION mm_conflict DROP TABLE acct;
SELECT mm_conflict.unreplicate_table('acct');
DELETE FROM mm_conflict.peer WHERE node_id = 9;
SELECT count(*) AS tombstones FROM mm_conflict.tombstone;
SELECT table_name FROM mm_conflict.replicated_tables;
SELECT id, balance FROM acct;

-- table_checksum: same rows, same number, whatever the column order and bookkeeping values.
CREATE TABLE m_c1(id int PRIMARY KEY, t text, n numeric);
CREATE TABLE m_c2(n numeric, id int PRIMARY KEY, t text, mm_islocal boolean);
INSERT INTO m_c1 VALUES (1, 'a', 1.5), (2, NULL, 2), (3, '', NULL);
INSERT INTO m_c2 VALUES (2, 2, NULL, true), (NULL, 3, '', false), (1.5, 1, 'a', NULL);
SELECT mm_conflict.table_checksum('m_c1') = mm_conflict.table_checksum('m_c2') AS same_rows_same_checksum;
UPDATE m_c2 SET t = NULL WHERE id = 3;
SELECT mm_conflict.table_checksum('m_c1') = mm_conflict.table_checksum('m_c2') AS null_equals_empty;
SELECT mm_conflict.table_checksum('m_view');
\echo :LAST_ERROR_SQLSTATE

-- create_mesh's node list: errors name the element and the field.
SELECT * FROM mm_conflict.mesh_nodes('[{"id": 1, "conninfo": "port=1"}, {"id": "2", "conninfo": "port=2"}]');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM mm_conflict.mesh_nodes('[{"id": 1, "conninfo": "port=1"}, {"id": 2, "conn_info": "port=2"}]');
SELECT * FROM mm_conflict.mesh_nodes('[{"id": 1, "conninfo": "port=1"}, {"id": 1, "conninfo": "port=2"}]');
SELECT * FROM mm_conflict.mesh_nodes('[{"id": 1, "conninfo": "port=1"}]');
SELECT * FROM mm_conflict.mesh_nodes('[{"id": 1, "name": "a", "conninfo": "port=1"}, {"id": 2, "conninfo": "port=2"}]');
-- An unreachable node: nothing is changed.
SELECT mm_conflict.create_mesh('[{"id": 1, "name": "a", "conninfo": "host=127.0.0.1 port=1"},
                                 {"id": 2, "name": "b", "conninfo": "host=127.0.0.1 port=2"}]', ARRAY['acct']::regclass[]);
\echo :LAST_ERROR_SQLSTATE
-- Not in a transaction that has written.
BEGIN;
INSERT INTO acct(id, balance) VALUES (3, 3);
SELECT mm_conflict.create_mesh('[{"id": 1, "conninfo": "host=127.0.0.1 port=1"},
                                 {"id": 2, "conninfo": "host=127.0.0.1 port=2"}]', ARRAY['acct']::regclass[]);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;

-- subscribe(), with a second database of this cluster as the peer.
CREATE DATABASE mm_regress_peer;
SELECT format('host=127.0.0.1 port=%s dbname=mm_regress_peer', current_setting('port')) AS peer \gset
SELECT mm_conflict.replicate_table('acct');
SELECT mm_conflict.subscribe(2, 'host=127.0.0.1 port=1 dbname=nowhere password=secret');
\echo :LAST_ERROR_SQLSTATE
SELECT mm_conflict.subscribe(2, :'peer');
\echo :LAST_ERROR_SQLSTATE
\c mm_regress_peer
CREATE EXTENSION mm_conflict;
\c :home
SELECT mm_conflict.subscribe(2, :'peer');
\echo :LAST_ERROR_SQLSTATE
\c mm_regress_peer
SELECT mm_conflict.node_init(3);
\c :home
SELECT mm_conflict.subscribe(2, :'peer');
\echo :LAST_ERROR_SQLSTATE
\c mm_regress_peer
SELECT mm_conflict.drop_mesh();
SELECT mm_conflict.node_init(2, 'beta');
\c :home
SELECT mm_conflict.subscribe(2, :'peer');
\echo :LAST_ERROR_SQLSTATE
\c mm_regress_peer
CREATE TABLE acct(id int PRIMARY KEY, balance int);
SELECT mm_conflict.replicate_table('acct');
\c :home
-- Works inside a transaction block (the slot is created over a separate connection).
BEGIN;
SELECT mm_conflict.subscribe(2, :'peer');
COMMIT;
SELECT node_id, node_name, subscription, enabled FROM mm_conflict.status;
SELECT mm_conflict.subscribe(2, :'peer');
SELECT mm_conflict.subscribe(2, :'peer' || ' application_name=other');
\echo :LAST_ERROR_SQLSTATE
SELECT mm_conflict.subscribe(1, :'peer');
\echo :LAST_ERROR_SQLSTATE
-- A row written on the peer arrives here, marked as not local.
\c mm_regress_peer
INSERT INTO acct(id, balance) VALUES (10, 100);
SELECT mm_conflict.wait_for_sync('60 s') AS synced;
\c :home
SELECT id, balance, mm_islocal, mm_nodeid FROM acct WHERE id = 10;

-- add_node: bad input is refused and changes nothing.
SELECT * FROM mm_conflict.add_node(NULL, 'host=127.0.0.1 port=1');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM mm_conflict.add_node(5, NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM mm_conflict.add_node(5, 'host=127.0.0.1 port=1', timeout => NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM mm_conflict.add_node(1, 'host=127.0.0.1 port=1');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM mm_conflict.add_node(40000, 'host=127.0.0.1 port=1');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM mm_conflict.add_node(5, 'host=127.0.0.1 port=1', node_name => ' ');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM mm_conflict.add_node(5, 'host=127.0.0.1 port=1', copy_from => 9);
\echo :LAST_ERROR_SQLSTATE
-- Not in a transaction that has written: the new node's slots here would wait for it.
BEGIN;
INSERT INTO acct(id, balance) VALUES (3, 3);
SELECT * FROM mm_conflict.add_node(5, 'host=127.0.0.1 port=1');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- An unreachable node, and a conninfo that reaches another node than the id says.
SELECT * FROM mm_conflict.add_node(5, 'host=127.0.0.1 port=1 password=secret');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM mm_conflict.add_node(5, :'peer');
\echo :LAST_ERROR_SQLSTATE
SELECT node_id, subscription FROM mm_conflict.status;
-- remove_node and the waits: bad input is refused and changes nothing.
SELECT * FROM mm_conflict.remove_node(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM mm_conflict.remove_node(1);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM mm_conflict.remove_node(0);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM mm_conflict.remove_node(7);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM mm_conflict.remove_node(2, force => NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM mm_conflict.remove_node(2, timeout => '-1 s');
\echo :LAST_ERROR_SQLSTATE
SELECT mm_conflict.wait_for_sync(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT mm_conflict._wait_for_peers(ARRAY[NULL]::bigint[], '1 s');
\echo :LAST_ERROR_SQLSTATE
-- drop_mesh's helper takes node ids only (65537 would wrap to node 1).
SELECT mm_conflict._unsubscribe(65537);
\echo :LAST_ERROR_SQLSTATE
-- A named peer without a slot here has confirmed nothing.
SELECT mm_conflict._wait_for_peers(ARRAY[5], '10 ms') AS peer_5_synced;
SELECT mm_conflict._wait_for_peers('{}', '10 ms') AS no_one_to_wait_for;
CREATE ROLE mm_regress_nobody;
SET ROLE mm_regress_nobody;
SELECT * FROM mm_conflict.remove_node(2);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM mm_conflict.add_node(5, 'host=127.0.0.1 port=1');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
DROP ROLE mm_regress_nobody;
SELECT node_id, subscription, enabled, problem, wal_status, peer_down_since FROM mm_conflict.status;
-- Node 2 leaves: this node's subscription from it goes; node 2 drops its side and keeps its rows.
SELECT * FROM mm_conflict.remove_node(2);
SELECT count(*) AS status_rows FROM mm_conflict.status;
SELECT count(*) AS subscriptions FROM pg_subscription;
\c mm_regress_peer
SELECT (SELECT count(*) FROM mm_conflict.node) AS node_rows,
       (SELECT count(*) FROM pg_publication) AS publications,
       (SELECT count(*) FROM pg_replication_slots) AS slots,
       (SELECT string_agg(id::text, ',') FROM acct) AS rows_kept;
\c :home
-- Once removed, it is not a node of the mesh any more.
SELECT * FROM mm_conflict.remove_node(2);
\echo :LAST_ERROR_SQLSTATE

-- Tear down: subscription, its slot on the peer, triggers, publication, identity.
SELECT mm_conflict.drop_mesh();
SELECT (SELECT count(*) FROM pg_subscription) AS subscriptions,
       (SELECT count(*) FROM pg_replication_slots) AS slots,
       (SELECT count(*) FROM pg_publication) AS publications,
       (SELECT count(*) FROM mm_conflict.node) AS node_rows,
       (SELECT count(*) FROM mm_conflict.replicated_tables) AS replicated_tables;
SELECT mm_conflict.drop_mesh();
\c mm_regress_peer
SELECT mm_conflict.drop_mesh();
\c :home
DROP DATABASE mm_regress_peer;
