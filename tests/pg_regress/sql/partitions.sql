-- Partitioned tables are replicated as their root: the trigger is cloned onto every partition
-- (also one attached later), tombstones and counters name the root, the publication sends the
-- root's changes, and table_checksum sums the leaves whatever the partitioning.
\set SHOW_CONTEXT never
SELECT mm_conflict.node_init(4, 'four');
CREATE TABLE p_orders(id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
CREATE TABLE p_low PARTITION OF p_orders FOR VALUES FROM (1) TO (100);
CREATE TABLE p_high PARTITION OF p_orders FOR VALUES FROM (100) TO (200);
SELECT mm_conflict.replicate_table('p_orders');
-- a partition added later takes the root's trigger as it is (ENABLE ALWAYS)
CREATE TABLE p_more PARTITION OF p_orders FOR VALUES FROM (200) TO (300);
SELECT tgrelid::regclass AS on_table, tgname, tgenabled
  FROM pg_trigger WHERE tgname IN ('!mm_resolve', '!mm_truncate') ORDER BY tgrelid::regclass::text, tgname;
SELECT table_name FROM mm_conflict.replicated_tables;
SELECT pubviaroot FROM pg_publication WHERE pubname = 'mm_conflict';
SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = 'mm_conflict' ORDER BY 1, 2;

-- local writes: stamped in every partition; a delete's tombstone names the root
INSERT INTO p_orders(id, v) VALUES (1, 'low'), (150, 'high'), (250, 'more');
SELECT tableoid::regclass AS partition, id, v, mm_islocal, mm_nodeid FROM p_orders ORDER BY id;
DELETE FROM p_orders WHERE id = 150;
SELECT table_name, encode(pk, 'hex') AS pk FROM mm_conflict.tombstone;

-- replicated changes arrive at the root and are resolved in their partition
SELECT pg_replication_origin_create('regress_partitions') > 0 AS created;
SELECT pg_replication_origin_session_setup('regress_partitions');
-- older than the delete: it does not bring the row back; newer: it does
INSERT INTO p_orders VALUES (150, 'old insert', true, 2, '2000-01-01', '2000-01-01');
INSERT INTO p_orders VALUES (1, 'newer from 2', true, 2, '2100-01-01', '2100-01-01');
-- a tombstone from node 2 newer than row 250 settles it in its partition
INSERT INTO mm_conflict.tombstone(table_name, pk, criterion, mm_last_stattime, mm_nodeid,
                                  mm_last_xacttime, order_last, order_winner, order_preferred)
VALUES ('public.p_orders', '\x00000004000000fa', '2100-01-02', '2100-01-02', 2, '2100-01-02', true, NULL, NULL);
SELECT pg_replication_origin_session_reset();
SELECT tableoid::regclass AS partition, id, v, mm_islocal, mm_nodeid FROM p_orders ORDER BY id;

-- table_checksum sums the leaves: the same rows in an ordinary table give the same number
CREATE TABLE p_flat(id int PRIMARY KEY, v text);
INSERT INTO p_flat SELECT id, v FROM p_orders;
SELECT mm_conflict.table_checksum('p_orders') = mm_conflict.table_checksum('p_flat') AS same_rows_same_checksum;

-- TRUNCATE is refused on the root and on each partition
TRUNCATE p_orders;
\echo :LAST_ERROR_SQLSTATE
TRUNCATE p_low;
\echo :LAST_ERROR_SQLSTATE

TRUNCATE p_more;    -- created after replicate_table: guarded by the event trigger
\echo :LAST_ERROR_SQLSTATE
-- a table attached later takes mm_resolve at once, and its TRUNCATE guard from replicate_table
-- on the root, run again (the event trigger leaves ALTER TABLE alone: see sql/mesh.sql)
CREATE TABLE p_top(LIKE p_orders);
ALTER TABLE p_orders ATTACH PARTITION p_top FOR VALUES FROM (300) TO (400);
SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'p_top'::regclass ORDER BY tgname;
SELECT mm_conflict.replicate_table('p_orders');
SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'p_top'::regclass ORDER BY tgname;
-- detached, it is no longer replicated: mm_resolve goes with the detach, and TRUNCATE works
ALTER TABLE p_orders DETACH PARTITION p_top;
SELECT tgname FROM pg_trigger WHERE tgrelid = 'p_top'::regclass ORDER BY tgname;
TRUNCATE p_top;
DROP TABLE p_top;
SELECT table_name FROM mm_conflict.conflict_stats;
SELECT mm_conflict.drop_mesh();
SELECT count(*) AS triggers_left FROM pg_trigger WHERE tgname IN ('!mm_resolve', '!mm_truncate');
DROP TABLE p_orders, p_flat;
DELETE FROM mm_conflict.tombstone;
SELECT pg_replication_origin_drop('regress_partitions');
