-- Every node inserts new keys of its own (≡ node - 1 mod 3; :node is the node's id, set by the
-- harness) with e-mail addresses from a small set that every node draws from: the unique e-mail
-- collides across nodes (never locally: ON CONFLICT).
\set id random(1, 1000000)
\set e random(1, 300)
INSERT INTO uq(id, node, email, v) VALUES (3 * :id + :node - 1, :node, 'user' || :e || '@example.org', 0)
    ON CONFLICT DO NOTHING;
\set u random(1, 3000000)
UPDATE uq SET v = v + 1 WHERE id = :u;
