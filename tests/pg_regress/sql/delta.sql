-- Delta (commutative) columns: each node's changes to them are kept in mm_delta, one entry per
-- node, and merged; concurrent increments from different nodes add up instead of one replacing
-- the other. The other columns keep last-writer-wins. (README "Delta columns".)
\set SHOW_CONTEXT never
SELECT mm_conflict.node_init(5, 'five');
CREATE TABLE d_acct(id int PRIMARY KEY, balance bigint NOT NULL DEFAULT 0, amount numeric(12,2),
                    small smallint DEFAULT 0, note text);
-- a row from before the declaration: its values are the base every node starts from
INSERT INTO d_acct(id, balance, amount) VALUES (1, 100, 10.50);
SELECT mm_conflict.replicate_table('d_acct', delta_columns => array['balance', 'amount', 'small']);
SELECT id, balance, amount, mm_delta FROM d_acct ORDER BY id;

-- local writes: an UPDATE adds new - old to this node's entry, an INSERT starts it
UPDATE d_acct SET balance = balance + 5, amount = amount - 0.25 WHERE id = 1;
INSERT INTO d_acct(id, balance, amount) VALUES (2, 7, 1);
UPDATE d_acct SET balance = 1000 WHERE id = 2;   -- an absolute value is a change too: +993
SELECT id, balance, amount, small, mm_delta FROM d_acct ORDER BY id;
-- mm_delta written by hand is ignored: the state follows the changes
UPDATE d_acct SET mm_delta = '-;9:99:1 1 1', note = 'n' WHERE id = 2;
SELECT id, balance, mm_delta FROM d_acct WHERE id = 2;

-- changes from peers (a replication origin session, as an apply worker)
SET mm_conflict.log_conflicts = 'table';
SELECT pg_replication_origin_create('regress_delta') > 0 AS created;
SELECT pg_replication_origin_session_setup('regress_delta');
-- node 2 changed row 1 at the same time, with an older version: its other columns lose, its
-- increment (+3) is added
UPDATE d_acct SET balance = 103, amount = 10.50, note = 'older from 2', mm_nodeid = 2,
                  mm_last_xacttime = '2000-01-01', mm_last_stattime = '2000-01-01',
                  mm_delta = '-;0:0:100 10.50 0;2:1:3 0 0'
 WHERE id = 1;
SELECT id, balance, amount, note, mm_nodeid, mm_delta FROM d_acct WHERE id = 1;
-- the same change again (a relayed copy, or a replay): nothing to add
UPDATE d_acct SET balance = 103, amount = 10.50, note = 'older from 2', mm_nodeid = 2,
                  mm_last_xacttime = '2000-01-01', mm_last_stattime = '2000-01-01',
                  mm_delta = '-;0:0:100 10.50 0;2:1:3 0 0'
 WHERE id = 1;
-- node 2's next change, newer: its other columns win, and this node's increments stay
UPDATE d_acct SET balance = 110, amount = 10.50, note = 'newer from 2', mm_nodeid = 2,
                  mm_last_xacttime = '2100-01-01', mm_last_stattime = '2100-01-01',
                  mm_delta = '-;0:0:100 10.50 0;2:2:10 0 0'
 WHERE id = 1;
-- node 3 inserted key 2 too, before it heard of this node's: the INSERT's value is added
INSERT INTO d_acct(id, balance, amount, note, mm_islocal, mm_nodeid, mm_last_xacttime,
                   mm_last_stattime, mm_delta)
VALUES (2, 4, 0, 'from 3', true, 3, '2000-01-01', '2000-01-01', '-;3:1:4 0 0');
-- a new key from node 3
INSERT INTO d_acct(id, balance, amount, note, mm_islocal, mm_nodeid, mm_last_xacttime,
                   mm_last_stattime, mm_delta)
VALUES (3, 40, 2.5, 'from 3', true, 3, '2000-01-01', '2000-01-01', '-;3:1:40 2.5 0');
SELECT id, balance, amount, note, mm_nodeid, mm_delta FROM d_acct ORDER BY id;
SELECT decision, key->>'id' AS key, stored_node, incoming_node
  FROM mm_conflict.conflict_log WHERE table_name = 'public.d_acct' ORDER BY id;

-- a sum that no longer fits the column: 22003, nothing written
UPDATE d_acct SET mm_delta = '-;3:1:40 2.5 0;4:1:0 0 30000;6:1:0 0 30000', mm_nodeid = 4,
                  mm_last_xacttime = '2100-01-01', mm_last_stattime = '2100-01-01'
 WHERE id = 3;
\echo :LAST_ERROR_SQLSTATE
-- a state that does not read: XX001
UPDATE d_acct SET mm_delta = 'garbage', mm_nodeid = 4,
                  mm_last_xacttime = '2100-01-01', mm_last_stattime = '2100-01-01'
 WHERE id = 3;
\echo :LAST_ERROR_SQLSTATE
SELECT pg_replication_origin_session_reset();
RESET mm_conflict.log_conflicts;

-- a DELETE ends the row's incarnation; a re-insert starts a new one (named by the tombstone) that
-- a change still in flight for the old one cannot add to
DELETE FROM d_acct WHERE id = 3;
INSERT INTO d_acct(id, balance, amount) VALUES (3, 1, 0);
SELECT id, balance, split_part(mm_delta, ';', 1) <> '-' AS new_incarnation,
       split_part(mm_delta, ';', 2) AS entry
  FROM d_acct WHERE id = 3;
SELECT pg_replication_origin_session_setup('regress_delta');
-- (newer: its note wins, but its increments belong to the row that was deleted)
UPDATE d_acct SET balance = 50, note = 'stale from 3', mm_nodeid = 3,
                  mm_last_xacttime = '2100-01-03', mm_last_stattime = '2100-01-03',
                  mm_delta = '-;3:2:50 2.5 0'
 WHERE id = 3;
SELECT pg_replication_origin_session_reset();
SELECT id, balance, note, split_part(mm_delta, ';', 2) AS entry FROM d_acct WHERE id = 3;

-- NULL in a delta column: 23502
INSERT INTO d_acct(id, balance, amount) VALUES (4, 1, NULL);
\echo :LAST_ERROR_SQLSTATE
UPDATE d_acct SET small = NULL WHERE id = 1;
\echo :LAST_ERROR_SQLSTATE
-- a local change whose value does not fit: PostgreSQL's own 22003
UPDATE d_acct SET small = small + 40000 WHERE id = 1;
\echo :LAST_ERROR_SQLSTATE

-- declarations refused
CREATE TABLE d_bad(id int PRIMARY KEY, f float8, t text, g bigint GENERATED ALWAYS AS (id * 2) STORED,
                   n bigint, ts timestamptz);
SELECT mm_conflict.replicate_table('d_bad', delta_columns => array['f']);
\echo :LAST_ERROR_SQLSTATE
SELECT mm_conflict.replicate_table('d_bad', delta_columns => array['t']);
\echo :LAST_ERROR_SQLSTATE
SELECT mm_conflict.replicate_table('d_bad', delta_columns => array['id']);
\echo :LAST_ERROR_SQLSTATE
SELECT mm_conflict.replicate_table('d_bad', delta_columns => array['g']);
\echo :LAST_ERROR_SQLSTATE
SELECT mm_conflict.replicate_table('d_bad', delta_columns => array['mm_nodeid']);
\echo :LAST_ERROR_SQLSTATE
SELECT mm_conflict.replicate_table('d_bad', 'ts', 'last', delta_columns => array['n', 'ts']);
\echo :LAST_ERROR_SQLSTATE
SELECT mm_conflict.replicate_table('d_bad', delta_columns => array['nope']);
\echo :LAST_ERROR_SQLSTATE
SELECT mm_conflict.replicate_table('d_bad', delta_columns => array['n', NULL]);
\echo :LAST_ERROR_SQLSTATE
-- written by hand, the trigger's arguments are checked as well
CREATE TRIGGER mm_resolve BEFORE INSERT OR UPDATE ON d_bad FOR EACH ROW
  EXECUTE FUNCTION mm_resolve(5, last_xacttime, last, 'balance');
INSERT INTO d_bad(id) VALUES (1);
\echo :LAST_ERROR_SQLSTATE
DROP TRIGGER mm_resolve ON d_bad;
CREATE TRIGGER mm_resolve BEFORE INSERT OR UPDATE ON d_bad FOR EACH ROW
  EXECUTE FUNCTION mm_resolve(5, last_xacttime, last, 'delta=n', 'delta=n');
INSERT INTO d_bad(id) VALUES (1);
\echo :LAST_ERROR_SQLSTATE
DROP TRIGGER mm_resolve ON d_bad;
-- the declaration is refused as a whole: no trigger, no mm_delta column was left behind
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'd_bad'::regclass AND NOT tgisinternal;
SELECT count(*) AS mm_delta FROM pg_attribute WHERE attrelid = 'd_bad'::regclass AND attname = 'mm_delta';

-- a table an ordinary role owns and writes: its writes are counted as any other
CREATE ROLE mm_delta_owner LOGIN;
CREATE ROLE mm_delta_other LOGIN;
GRANT CREATE ON SCHEMA public TO mm_delta_owner;
SET ROLE mm_delta_owner;
CREATE TABLE d_owned(id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
RESET ROLE;
SELECT mm_conflict.replicate_table('d_owned', delta_columns => array['n']);
SET ROLE mm_delta_owner;
INSERT INTO d_owned VALUES (1, 5);
UPDATE d_owned SET n = n + 1;
SELECT n, mm_delta FROM d_owned;
RESET ROLE;
-- another role gets no road to it through the declaration
SET ROLE mm_delta_other;
SELECT mm_conflict.replicate_table('d_owned', delta_columns => array['n']);
\echo :LAST_ERROR_SQLSTATE
UPDATE d_owned SET n = n + 1;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

SELECT mm_conflict.drop_mesh();
DROP TABLE d_acct, d_bad, d_owned;
REVOKE CREATE ON SCHEMA public FROM mm_delta_owner;
DROP ROLE mm_delta_owner, mm_delta_other;
DELETE FROM mm_conflict.tombstone;
DELETE FROM mm_conflict.conflict_log;
SELECT pg_replication_origin_drop('regress_delta');

-- create_mesh's delta_columns, checked before any node is reached: 22023
CREATE TABLE d_mesh(id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
SELECT mm_conflict.create_mesh('[]', ARRAY['d_mesh']::regclass[], delta_columns => '["n"]');
\echo :LAST_ERROR_SQLSTATE
SELECT mm_conflict.create_mesh('[]', ARRAY['d_mesh']::regclass[], delta_columns => '{"other": ["n"]}');
\echo :LAST_ERROR_SQLSTATE
SELECT mm_conflict.create_mesh('[]', ARRAY['d_mesh']::regclass[], delta_columns => '{"public.d_mesh": "n"}');
\echo :LAST_ERROR_SQLSTATE
DROP TABLE d_mesh;
