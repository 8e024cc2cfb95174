-- table_diff and repair on one node: their errors with their SQLSTATEs, the buckets, and the
-- repair writes, each resolved by the trigger as a replicated change (a version that is not
-- better changes nothing; the same version with another content only when asked for).
\set SHOW_CONTEXT never
\set home :DBNAME
CREATE DATABASE mm_repair;
\c mm_repair
SET client_min_messages = warning;
CREATE EXTENSION mm_conflict;
CREATE TABLE acct(id int PRIMARY KEY, balance int, note text);
SELECT mm_conflict.node_init(1);
SELECT mm_conflict.replicate_table('acct');
INSERT INTO acct(id, balance) SELECT g, g * 10 FROM generate_series(1, 100) g;

-- A node that is not a peer; NULL arguments.
SELECT * FROM mm_conflict.table_diff('acct', 2);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM mm_conflict.table_diff('acct', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT mm_conflict.repair(NULL);
\echo :LAST_ERROR_SQLSTATE
-- Without peers, repair has nothing to do.
SELECT mm_conflict.repair('acct');

-- The buckets: one at level 0 that holds every row; level 8 spreads them.
SELECT bucket, rows FROM mm_conflict._diff_summary('acct', 0, NULL);
SELECT sum(rows), count(*) > 50 AS spread, max(bucket) < 256 AS in_range
  FROM mm_conflict._diff_summary('acct', 8, '{0}');
-- Children of other buckets only: none.
SELECT count(*) FROM mm_conflict._diff_summary('acct', 8, '{1}');
-- A table without mm_resolve; a level that is not one.
CREATE TABLE plain(id int PRIMARY KEY);
SELECT * FROM mm_conflict._diff_summary('plain', 0, NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM mm_conflict._diff_summary('acct', 3, NULL);
\echo :LAST_ERROR_SQLSTATE

-- A row's binary key decodes to the key's columns; its JSON form (found by key) is the row.
CREATE VIEW keyed AS
SELECT c.pk, c.content::json AS content
  FROM mm_conflict._diff_contents('acct', (SELECT array_agg(pk) FROM mm_conflict._diff_rows('acct', 0, '{0}', NULL))) c;
SELECT mm_conflict._diff_key('acct', pk) AS key,
       content::jsonb - 'mm_last_xacttime' - 'mm_last_stattime' AS row
  FROM keyed WHERE (content->>'id')::int = 7;
-- Keys without a row are left out.
SELECT count(*) FROM mm_conflict._diff_contents('acct',
    (SELECT array_agg(pk) FROM keyed WHERE (content->>'id')::int <= 3) || '\x0000000400000fff'::bytea);

-- Repair writes. Row 7 as another node would send it: older, newer, the same version.
SET mm_conflict.log_conflicts = 'table';
CREATE FUNCTION item(key int, bal int, txt text, shift interval, node int2) RETURNS text
LANGUAGE sql AS $$
    SELECT json_build_array(json_build_object('row', json_build_object(
        'id', key, 'balance', bal, 'note', txt, 'mm_islocal', false, 'mm_nodeid', node,
        'mm_last_xacttime', a.mm_last_xacttime + shift, 'mm_last_stattime', a.mm_last_stattime + shift)))::text
      FROM acct a WHERE a.id = key
$$;
SELECT mm_conflict._repair_apply('acct', item(7, -1, 'older', '-1 hour', 2::int2), false);
SELECT balance, note, mm_nodeid FROM acct WHERE id = 7;
SELECT mm_conflict._repair_apply('acct', item(7, -2, 'newer', '1 hour', 2::int2), false);
SELECT balance, note, mm_nodeid FROM acct WHERE id = 7;
SELECT mm_conflict._repair_apply('acct', item(7, -3, 'same version', '0', 2::int2), false);
SELECT balance, note, mm_nodeid FROM acct WHERE id = 7;
SELECT mm_conflict._repair_apply('acct', item(7, -3, 'same version', '0', 2::int2), true);
SELECT balance, note, mm_nodeid, mm_islocal FROM acct WHERE id = 7;
-- A key this node does not have is inserted with its version.
SELECT mm_conflict._repair_apply('acct', replace(item(8, 80, 'from node 3', '0', 3::int2), '"id" : 8', '"id" : 1000'), false);
SELECT id, balance, note, mm_nodeid FROM acct WHERE id = 1000;
-- A tombstone that beats row 9 deletes it, and is kept; one that does not leaves row 10.
SELECT mm_conflict._repair_apply('acct', json_build_array(json_build_object('tombstone', json_build_object(
    'table_name', 'public.acct', 'pk', pk, 'criterion', now() + shift, 'mm_last_stattime', now() + shift,
    'mm_nodeid', 2, 'mm_last_xacttime', now() + shift, 'order_last', true, 'deleted_at', now())))::text, false)
  FROM keyed, (VALUES (9, interval '1 hour'), (10, interval '-1 hour')) v(id, shift)
 WHERE (content->>'id')::int = v.id;
SELECT id FROM acct WHERE id IN (9, 10) ORDER BY id;
SELECT count(*) FROM mm_conflict.tombstone;
-- Each write was resolved, and logged, as a replicated change coming from mm_conflict.repair.
SELECT decision, key, stored_node, incoming_node, origin FROM mm_conflict.conflict_log ORDER BY id;

-- A peer that cannot be reached: 08001, naming the node (without dblink: 55000, dblink missing).
SET client_min_messages = error;
CREATE SUBSCRIPTION mm_unreachable CONNECTION 'host=127.0.0.1 port=1 dbname=none connect_timeout=2'
    PUBLICATION mm_conflict WITH (connect = false);
SET client_min_messages = warning;
INSERT INTO mm_conflict.peer VALUES (3, 'unreachable', 'mm_unreachable');
\set VERBOSITY terse
SELECT * FROM mm_conflict.table_diff('acct', 3);
\echo :LAST_ERROR_SQLSTATE
SELECT mm_conflict.repair('acct');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
DELETE FROM mm_conflict.peer;
ALTER SUBSCRIPTION mm_unreachable SET (slot_name = NONE);
DROP SUBSCRIPTION mm_unreachable;

-- Only a superuser writes repairs.
CREATE ROLE mm_repair_user;
GRANT ALL ON acct TO mm_repair_user;
SET ROLE mm_repair_user;
SELECT mm_conflict._repair_apply('acct', '[]', false);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM mm_conflict.table_diff('acct', 2);
\echo :LAST_ERROR_SQLSTATE
-- Tombstones are for the owner of mm_conflict.tombstone and superusers: SELECT on the table is not
-- enough to see a deleted key's version (nor its tombstone row).
SELECT count(*) FROM mm_conflict._diff_tombstones('acct', ARRAY['\x0000000400000009'::bytea], false);
\echo :SQLSTATE
SELECT count(*) FROM mm_conflict._diff_tombstones('acct', ARRAY['\x0000000400000009'::bytea], true);
\echo :SQLSTATE
SELECT mm_conflict._repair_items('acct', ARRAY['\x0000000400000009'::bytea]);
\echo :SQLSTATE
RESET ROLE;
SELECT pk, node, content::json->>'table_name' AS table_name
  FROM mm_conflict._diff_tombstones('acct', ARRAY['\x0000000400000009'::bytea], true);

\c :home
DROP DATABASE mm_repair;
DROP ROLE mm_repair_user;
