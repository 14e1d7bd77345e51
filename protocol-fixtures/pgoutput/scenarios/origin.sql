SELECT pg_replication_origin_session_setup('upstream') \g /dev/null
BEGIN;
SELECT pg_replication_origin_xact_setup('0/1234ABCD', '2024-05-06 07:08:09.123456+00') \g /dev/null
INSERT INTO o VALUES (1);
COMMIT;
SELECT pg_replication_origin_session_reset() \g /dev/null
