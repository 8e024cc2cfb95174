-- Schema changes on a running mesh (README "Schema changes"). replicate_ddl's plan and runner are
-- Rust (core/src/ddl.rs, src/mesh/ddl.rs); what stays in SQL: the table of changes made, the SQL
-- function that hands the caller's search_path to the runner, and the two event triggers that
-- watch schema changes of replicated tables made without it.

-- The schema changes this node made through replicate_ddl, each recorded in the transaction that
-- made it: a node has the row if and only if it made the change. `nodes`: every node of the mesh
-- the change was made on (all of them, or none).
CREATE TABLE mm_conflict.schema_change (
    change_id  text PRIMARY KEY,
    origin     smallint NOT NULL,
    command    text NOT NULL,
    joined     text[] NOT NULL DEFAULT '{}',
    nodes      smallint[] NOT NULL DEFAULT '{}',
    applied_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
SELECT pg_catalog.pg_extension_config_dump('mm_conflict.schema_change', '');

-- Runs `command` on every node of the mesh, under the caller's search_path (read here: the Rust
-- function it calls pins its own).
CREATE FUNCTION mm_conflict.replicate_ddl(command text, timeout interval DEFAULT '1 minute')
RETURNS TABLE(node integer, detail text)
LANGUAGE sql VOLATILE
AS $$
    SELECT r.node, r.detail
      FROM mm_conflict._replicate_ddl(command, timeout, pg_catalog.current_setting('search_path')) r
$$;

-- ALTER TABLE of a replicated table, or a unique index on one: its bookkeeping columns must stay
-- as they are, and outside replicate_ddl on a node of a mesh mm_conflict.bare_ddl says what happens.
CREATE FUNCTION mm_conflict._ddl_event() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM mm_conflict._ddl_watch(array_agg(objid), array_agg(object_type), array_agg(command_tag))
       FROM pg_event_trigger_ddl_commands()
      WHERE classid = 'pg_catalog.pg_class'::regclass
        AND object_type IN ('table', 'table column', 'index');
END
$$;
CREATE EVENT TRIGGER mm_conflict_ddl ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'CREATE INDEX', 'ALTER INDEX')
    EXECUTE FUNCTION mm_conflict._ddl_event();

-- DROP TABLE of a replicated table (its mm_resolve trigger goes with it), or DROP TRIGGER of it.
CREATE FUNCTION mm_conflict._ddl_drop_event() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM mm_conflict._ddl_watch_drop(tg_tag, jsonb_agg(address_names))
       FROM pg_event_trigger_dropped_objects()
      WHERE object_type = 'trigger';
END
$$;
CREATE EVENT TRIGGER mm_conflict_ddl_drop ON sql_drop
    WHEN TAG IN ('DROP TABLE', 'DROP TRIGGER')
    EXECUTE FUNCTION mm_conflict._ddl_drop_event();
