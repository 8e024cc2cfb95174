-- Large values: see the test large_values_converge.
\set id random(1, 200)
UPDATE big SET a = a + 1 WHERE id = :id;
