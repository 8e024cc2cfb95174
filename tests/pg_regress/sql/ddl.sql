-- Schema changes: replicate_ddl's errors before anything changes, one node's part of a change
-- (_ddl_apply), mm_conflict's own columns kept, and schema changes made without replicate_ddl
-- on a node of a mesh (a peer row stands in for the mesh here).
\set SHOW_CONTEXT never
SELECT mm_conflict.node_init(1, 'one') WHERE NOT EXISTS (SELECT 1 FROM mm_conflict.node);
CREATE TABLE dt(id int PRIMARY KEY, v text, c timestamptz);
SELECT mm_conflict.replicate_table('dt');

-- replicate_ddl: arguments, rights, and a node without peers.
SELECT * FROM mm_conflict.replicate_ddl(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM mm_conflict.replicate_ddl('  ');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM mm_conflict.replicate_ddl('ALTER TABLE dt ADD COLUMN x int', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM mm_conflict.replicate_ddl('ALTER TABLE dt ADD COLUMN x int');
\echo :LAST_ERROR_SQLSTATE
BEGIN;
INSERT INTO dt(id, v) VALUES (1, 'written');
SELECT * FROM mm_conflict.replicate_ddl('ALTER TABLE dt ADD COLUMN x int');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
CREATE ROLE mm_ddl_user LOGIN;
GRANT ALL ON dt TO mm_ddl_user;
SET ROLE mm_ddl_user;
SELECT * FROM mm_conflict.replicate_ddl('ALTER TABLE dt ADD COLUMN x int');
\echo :LAST_ERROR_SQLSTATE
SELECT mm_conflict._ddl_apply('DROP TABLE dt', 'public', 1, 'evil-1');
\echo :LAST_ERROR_SQLSTATE
-- The watch is callable by anyone and changes nothing.
SELECT mm_conflict._ddl_watch(ARRAY[0, 1, 'dt'::regclass]::oid[], ARRAY['table', 'index', 'table'],
                              ARRAY['ALTER TABLE', 'CREATE INDEX', 'ALTER TABLE']);
SELECT mm_conflict._ddl_watch(NULL, NULL, NULL);
SELECT mm_conflict._ddl_watch_drop(NULL, '[["public"], 7, null]');
RESET ROLE;

-- One node's part: the command under the caller's search_path; a table it creates joins the
-- mesh (trigger, publication); one without a primary key does not; the change is recorded.
CREATE SCHEMA ddl_s;
SELECT mm_conflict._ddl_apply(
  'CREATE TABLE d2(id bigint PRIMARY KEY, v text); CREATE TABLE d3(v text); ALTER TABLE public.dt ADD COLUMN n int DEFAULT 5',
  'ddl_s, public', 1, '1-100');
SELECT table_name, enabled_always, published FROM mm_conflict.replicated_tables ORDER BY 1;
SELECT change_id, origin, command LIKE 'CREATE TABLE d2%' AS command, joined, nodes FROM mm_conflict.schema_change;
SELECT n FROM dt;
-- The command's own error, as it is; a command that cannot run in a transaction.
SELECT mm_conflict._ddl_apply('ALTER TABLE nosuch ADD COLUMN x int', 'public', 1, '1-101');
\echo :LAST_ERROR_SQLSTATE
SELECT mm_conflict._ddl_apply('CREATE INDEX CONCURRENTLY dt_v ON dt(v)', 'public', 1, '1-102');
\echo :LAST_ERROR_SQLSTATE
SELECT mm_conflict._ddl_apply('VACUUM dt', 'public', 1, '1-103');
\echo :LAST_ERROR_SQLSTATE
-- A column list left by an interrupted change goes back to every column.
ALTER PUBLICATION mm_conflict DROP TABLE dt;
ALTER PUBLICATION mm_conflict ADD TABLE dt (id, v, mm_islocal, mm_nodeid, mm_last_xacttime, mm_last_stattime);
SELECT mm_conflict._ddl_apply('ALTER TABLE dt ADD COLUMN m int', 'public', 1, '1-104');
SELECT count(*) FROM pg_publication_rel WHERE prattrs IS NOT NULL;

-- mm_conflict's own columns stay as they are, with or without a mesh; so does a criterion column.
ALTER TABLE dt DROP COLUMN mm_nodeid;
\echo :LAST_ERROR_SQLSTATE
ALTER TABLE dt ALTER COLUMN mm_last_stattime TYPE text;
\echo :LAST_ERROR_SQLSTATE
ALTER TABLE dt RENAME COLUMN mm_islocal TO islocal;
\echo :LAST_ERROR_SQLSTATE
SELECT mm_conflict.replicate_table('dt', 'c', 'last');
ALTER TABLE dt DROP COLUMN c;
\echo :LAST_ERROR_SQLSTATE
SELECT mm_conflict.replicate_table('dt');
ALTER TABLE dt DROP COLUMN c;

-- On a node of a mesh: a WARNING that names replicate_ddl, or an error, or nothing.
INSERT INTO mm_conflict.peer(node_id, node_name, subscription) VALUES (2, 'two', 'mm_conflict_2_to_1');
ALTER TABLE dt ADD COLUMN w int;
CREATE UNIQUE INDEX dt_w ON dt(w);
CREATE INDEX dt_v ON dt(v);
SET mm_conflict.bare_ddl = error;
ALTER TABLE dt DROP COLUMN w;
\echo :LAST_ERROR_SQLSTATE
DROP TABLE ddl_s.d2;
\echo :LAST_ERROR_SQLSTATE
SET mm_conflict.bare_ddl = allow;
ALTER TABLE dt DROP COLUMN w;
RESET mm_conflict.bare_ddl;
DROP TABLE ddl_s.d2;
-- Tables that are not replicated are not watched.
ALTER TABLE ddl_s.d3 ADD COLUMN x int;
DELETE FROM mm_conflict.peer;
ALTER TABLE dt ADD COLUMN w2 int;

DROP TABLE ddl_s.d3;
SELECT mm_conflict.drop_mesh();
DROP TABLE dt;
DROP SCHEMA ddl_s;
DROP OWNED BY mm_ddl_user;
DROP ROLE mm_ddl_user;
