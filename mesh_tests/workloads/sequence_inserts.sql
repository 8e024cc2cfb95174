-- New rows through a bigserial key and a GENERATED ALWAYS AS IDENTITY key: the keys come from
-- each node's own sequences, which replicate_table staggered.
INSERT INTO seq_serial(v) VALUES (random());
INSERT INTO seq_identity(v) VALUES (random());
