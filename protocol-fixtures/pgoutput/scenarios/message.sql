SELECT pg_logical_emit_message(true, 'p', 'x') \g /dev/null
SELECT pg_logical_emit_message(false, 'np', 'hello') \g /dev/null
BEGIN;
INSERT INTO m VALUES (1);
SELECT pg_logical_emit_message(true, 'p', '\x00ff'::bytea) \g /dev/null
COMMIT;
