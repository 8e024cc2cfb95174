-- INSERT ... ON CONFLICT on a replicated table gives PostgreSQL's own results, stamped. The trigger
-- of an upsert's row looks its key up and, when the row exists, locks it before PostgreSQL does
-- (tests/isolation/specs/upsert_vs_delete.spec shows why); errors stay PostgreSQL's own.
\set SHOW_CONTEXT never
SELECT mm_conflict.node_init(5, 'five');
CREATE TABLE up(id int PRIMARY KEY, email text UNIQUE, v text);
SELECT mm_conflict.replicate_table('up');
INSERT INTO up(id, email, v) VALUES (1, 'a@x', 'first')
    ON CONFLICT (id) DO UPDATE SET v = excluded.v;
INSERT INTO up(id, email, v) VALUES (1, 'a@x', 'second')
    ON CONFLICT (id) DO UPDATE SET v = excluded.v RETURNING id, v, mm_islocal, mm_nodeid;
-- the same key twice in one statement: PostgreSQL's own error (21000)
INSERT INTO up(id, v) VALUES (2, 'x'), (2, 'y') ON CONFLICT (id) DO UPDATE SET v = excluded.v;
-- a conflict on another unique key updates the row that holds the value
INSERT INTO up(id, email, v) VALUES (3, 'a@x', 'third')
    ON CONFLICT (email) DO UPDATE SET v = excluded.v;
-- the key exists, the conflict target is another key: PostgreSQL's duplicate-key error (23505)
INSERT INTO up(id, email, v) VALUES (1, 'new@x', 'dup') ON CONFLICT (email) DO UPDATE SET v = 'no';
INSERT INTO up(id, email, v) VALUES (1, 'z@x', 'ignored') ON CONFLICT DO NOTHING;
-- an upsert in a WITH, twice: an insert, then an update
WITH w AS (INSERT INTO up(id, v) VALUES (4, 'cte') ON CONFLICT (id) DO UPDATE SET v = 'cte again'
           RETURNING v)
SELECT * FROM w;
WITH w AS (INSERT INTO up(id, v) VALUES (4, 'cte') ON CONFLICT (id) DO UPDATE SET v = 'cte again'
           RETURNING v)
SELECT * FROM w;
-- in a PL/pgSQL loop whose second pass is rolled back by its exception block
DO $$
BEGIN
    FOR i IN 1..3 LOOP
        BEGIN
            INSERT INTO up(id, v) VALUES (5, 'loop ' || i)
                ON CONFLICT (id) DO UPDATE SET v = excluded.v;
            IF i = 2 THEN
                RAISE EXCEPTION 'undo %', i;
            END IF;
        EXCEPTION WHEN raise_exception THEN
            NULL;
        END;
    END LOOP;
END
$$;
SELECT id, email, v, mm_islocal, mm_nodeid FROM up ORDER BY id;
-- a key lock is released at the end of the statement that took it, inside a transaction too
BEGIN;
INSERT INTO up(id, v) VALUES (6, 'new') ON CONFLICT (id) DO UPDATE SET v = excluded.v;
INSERT INTO up(id, v) VALUES (7, 'plain');
SELECT count(*) AS key_locks FROM pg_locks
 WHERE pid = pg_backend_pid() AND locktype = 'advisory' AND objsubid = 19789;
COMMIT;
-- an error inside a function keeps PostgreSQL's context lines (the executor hook passes errors on
-- as they were raised)
CREATE FUNCTION up_fail() RETURNS void LANGUAGE sql AS $$ INSERT INTO up(id, v) VALUES (1, 'dup') $$;
\set SHOW_CONTEXT always
SELECT up_fail();
\set SHOW_CONTEXT never
DROP FUNCTION up_fail();
SELECT mm_conflict.drop_mesh();
DROP TABLE up;
DELETE FROM mm_conflict.tombstone;
