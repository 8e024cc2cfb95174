-- A key type whose equality is not byte equality (citext): mm_conflict's statements match the key
-- with the key index's own operator, so they find exactly the row the index finds, whatever the
-- session's search_path (an apply worker's is empty). (Without contrib, as PostgreSQL 16's build
-- here, it is skipped: citext_keys_1.out.)
\set SHOW_CONTEXT never
SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'citext') AS has_citext \gset
\if :has_citext
SELECT mm_conflict.node_init(1, 'one') WHERE NOT EXISTS (SELECT 1 FROM mm_conflict.node);
CREATE EXTENSION IF NOT EXISTS citext;
CREATE TABLE ck(email citext PRIMARY KEY, info text);
SELECT mm_conflict.replicate_table('ck');
INSERT INTO ck(email, info) VALUES ('Bob@Example.com', 'local');
SELECT pg_replication_origin_create('regress_citext') > 0 AS created;
SELECT pg_replication_origin_session_setup('regress_citext');
SET search_path = pg_catalog;
-- Node 2 inserted the same key in another spelling, later: the stored row is overwritten (an
-- INSERT converted to an UPDATE), not duplicated and not skipped.
INSERT INTO public.ck(email, info, mm_islocal, mm_nodeid, mm_last_xacttime, mm_last_stattime)
VALUES ('bob@example.COM', 'from node 2', true, 2, '2100-01-01', '2100-01-01');
SELECT email, info, mm_nodeid FROM public.ck;
-- A tombstone of the key in a third spelling, older than the row: the row beats it and is re-sent
-- (deleted and inserted again), still one row.
INSERT INTO mm_conflict.tombstone(table_name, pk, criterion, mm_last_stattime, mm_nodeid,
                                  mm_last_xacttime, order_last)
VALUES ('public.ck', '\x0000000f424f42406578616d706c652e636f6d', '2000-01-01', '2000-01-01', 3,
        '2000-01-01', true);
SELECT email, info, mm_nodeid FROM public.ck;
-- A newer one deletes it.
INSERT INTO mm_conflict.tombstone(table_name, pk, criterion, mm_last_stattime, mm_nodeid,
                                  mm_last_xacttime, order_last)
VALUES ('public.ck', '\x0000000f424f42406578616d706c652e636f6d', '2200-01-01', '2200-01-01', 3,
        '2200-01-01', true)
ON CONFLICT (table_name, pk) DO UPDATE SET criterion = excluded.criterion,
    mm_last_stattime = excluded.mm_last_stattime, mm_last_xacttime = excluded.mm_last_xacttime;
SELECT count(*) AS rows_left FROM public.ck;
RESET search_path;
SELECT pg_replication_origin_session_reset();
SELECT pg_replication_origin_drop('regress_citext');
SELECT mm_conflict.drop_mesh();
DROP TABLE ck;
DELETE FROM mm_conflict.tombstone;
\else
\echo 'citext is not installed here: skipped'
\endif
