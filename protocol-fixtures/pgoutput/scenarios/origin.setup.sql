CREATE TABLE o (id int4 PRIMARY KEY);
SELECT pg_replication_origin_create('upstream') \g /dev/null
