-- A replicated row that collides with a row of another key on a unique key besides the primary
-- key: the row with the better version keeps the value, the other is deleted (on every node, by
-- a tombstone that carries the winner's version), and the contest is logged with both rows.
\set SHOW_CONTEXT never
SELECT mm_conflict.node_init(5, 'five');
CREATE TABLE u_acct(id int PRIMARY KEY, email text UNIQUE, v text);
SELECT mm_conflict.replicate_table('u_acct');
INSERT INTO u_acct(id, email, v) VALUES (1, 'a@x', 'local'), (2, 'b@x', 'local'), (3, NULL, 'local');
SET mm_conflict.log_conflicts = 'table';
SELECT pg_replication_origin_create('regress_unique') > 0 AS created;
SELECT pg_replication_origin_session_setup('regress_unique');
-- older than the local row that holds a@x: it loses, and its key gets a tombstone
INSERT INTO u_acct VALUES (10, 'a@x', 'older from 2', true, 2, '2000-01-01', '2000-01-01');
-- newer than the local row that holds b@x: it wins, and the local row is deleted
INSERT INTO u_acct VALUES (11, 'b@x', 'newer from 2', true, 2, '2100-01-01', '2100-01-01');
-- NULLs never collide
INSERT INTO u_acct VALUES (12, NULL, 'null from 2', true, 2, '2100-01-01', '2100-01-01');
-- an UPDATE that takes a value another row holds: the better version wins it here too
UPDATE u_acct SET email = 'a@x', v = 'newer update from 2', mm_nodeid = 2,
                  mm_last_xacttime = '2100-01-02', mm_last_stattime = '2100-01-02'
 WHERE id = 12;
SELECT pg_replication_origin_session_reset();
RESET mm_conflict.log_conflicts;
SELECT id, email, v FROM u_acct ORDER BY id;
-- keys 1 and 2 lost to the newer rows from node 2 (their tombstones carry those versions); key 10
-- lost to row 1 as it was then (its tombstone carries row 1's version, stamped by this node)
SELECT table_name, encode(pk, 'hex') AS pk, mm_nodeid, criterion >= '2100-01-01' AS from_node_2
  FROM mm_conflict.tombstone ORDER BY pk;
SELECT decision, key->>'id' AS key, stored_row->>'id' AS stored, incoming_row->>'id' AS incoming,
       stored_node, incoming_node
  FROM mm_conflict.conflict_log WHERE table_name = 'public.u_acct' ORDER BY id;
SELECT mm_conflict.drop_mesh();
DROP TABLE u_acct;
DELETE FROM mm_conflict.tombstone;
DELETE FROM mm_conflict.conflict_log;
SELECT pg_replication_origin_drop('regress_unique');
