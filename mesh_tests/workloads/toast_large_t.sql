-- Large values: see the test large_values_converge.
\set id random(1, 200)
UPDATE big SET t = (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 200)) WHERE id = :id;
