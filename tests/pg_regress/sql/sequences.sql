-- Node-safe keys: replicate_table staggers every sequence that feeds a column of the table, so the
-- values each node draws never meet another node's.
\set SHOW_CONTEXT never
SELECT mm_conflict.node_init(3, 'three');
CREATE TABLE s_big(id bigserial PRIMARY KEY, v text);
CREATE TABLE s_ident(id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
CREATE SEQUENCE s_shared;
CREATE TABLE s_default(id bigint PRIMARY KEY DEFAULT nextval('s_shared'), v text);
INSERT INTO s_big(v) VALUES ('before'), ('before');      -- ids 1, 2: restart above them
SELECT mm_conflict.replicate_table('s_big');
SELECT mm_conflict.replicate_table('s_ident');
SELECT mm_conflict.replicate_table('s_default');
SELECT table_name, column_name, sequence_name, increment, node_safe, problem FROM mm_conflict.sequences;
-- Node 3 draws 3 + k * 32768, above what the table holds.
INSERT INTO s_big(v) VALUES ('a'), ('b');
INSERT INTO s_ident(v) VALUES ('a'), ('b');
INSERT INTO s_default(v) VALUES ('a');
SELECT id, id % 32768 AS residue FROM s_big ORDER BY id;
SELECT id, id % 32768 AS residue FROM s_ident ORDER BY id;
SELECT id % 32768 AS residue FROM s_default;
-- Idempotent: a second call changes nothing.
SELECT mm_conflict.replicate_table('s_big');
SELECT last_value FROM s_big_id_seq;
-- setval on one node breaks it; the view says so, and replicate_table mends it.
SELECT setval('s_big_id_seq', 100000);
SELECT table_name, node_safe, problem IS NOT NULL AS has_problem FROM mm_conflict.sequences WHERE table_name = 'public.s_big';
SELECT mm_conflict.replicate_table('s_big');
INSERT INTO s_big(v) VALUES ('after setval');
SELECT id > 100000 AS above, id % 32768 AS residue FROM s_big WHERE v = 'after setval';
-- serial (integer): staggered by 128, with a warning that says the ceiling.
CREATE TABLE s_int(id serial PRIMARY KEY, v text);
SELECT mm_conflict.replicate_table('s_int');
INSERT INTO s_int(v) VALUES ('a'), ('b');
SELECT id FROM s_int ORDER BY id;
-- smallserial cannot be made node-safe.
CREATE TABLE s_small(id smallserial PRIMARY KEY, v text);
SELECT mm_conflict.replicate_table('s_small');
\echo :LAST_ERROR_SQLSTATE
SELECT mm_conflict.drop_mesh();
DROP TABLE s_big, s_ident, s_default, s_int, s_small;
DROP SEQUENCE s_shared;
DELETE FROM mm_conflict.tombstone;
