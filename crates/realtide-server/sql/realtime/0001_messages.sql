-- realtide migration 1: the realtime schema used by private channels and broadcast from the
-- database. Written from the documented behaviour of Supabase Realtime's tenant schema; runs
-- once per database, inside the migration transaction, under an advisory lock.

create schema if not exists realtime;

-- One row per database-originated broadcast (and the rolled-back authorization probes).
-- Partitioned by day on inserted_at; realtide creates partitions ahead and drops old ones.
create table if not exists realtime.messages (
  topic text not null,
  extension text not null,
  payload jsonb,
  event text,
  private boolean default false,
  updated_at timestamp without time zone not null default now(),
  inserted_at timestamp without time zone not null default now(),
  id uuid not null default gen_random_uuid(),
  binary_payload bytea,
  constraint messages_payload_exclusive check (payload is null or binary_payload is null),
  primary key (id, inserted_at)
) partition by range (inserted_at);

-- Replay reads the newest private broadcasts of a topic.
create index if not exists messages_inserted_at_topic_index
  on realtime.messages (inserted_at desc, topic)
  where extension = 'broadcast' and private is true;

-- Policies on this table decide who may read (SELECT) and write (INSERT) private channels.
alter table realtime.messages enable row level security;

-- The channel being authorized, for policies: the sub-topic, or null when unset or empty.
create or replace function realtime.topic() returns text
  language sql stable
  as $$ select nullif(current_setting('realtime.topic', true), '') $$;

-- Broadcast `payload` as `event` on `topic` (sub-topic) to subscribers of the private (default)
-- or public channel. Never fails the caller's transaction: errors become a warning.
create or replace function realtime.send(payload jsonb, event text, topic text, private boolean default true)
  returns void
  language plpgsql
  as $$
declare
  message_id uuid := gen_random_uuid();
  body jsonb := payload;
begin
  begin
    if jsonb_typeof(body) = 'object' and not (body ? 'id') then
      body := body || jsonb_build_object('id', message_id);
    end if;
    perform set_config('realtime.topic', topic, true);
    insert into realtime.messages (id, payload, event, topic, private, extension)
      values (message_id, body, event, topic, private, 'broadcast');
  exception when others then
    raise warning 'WarnSendingBroadcastMessage: %', sqlerrm;
  end;
end;
$$;

-- The same with a binary body (delivered as a binary broadcast; never to V1 clients).
create or replace function realtime.send_binary(payload bytea, event text, topic text, private boolean default true)
  returns void
  language plpgsql
  as $$
declare
  message_id uuid := gen_random_uuid();
begin
  begin
    perform set_config('realtime.topic', topic, true);
    insert into realtime.messages (id, binary_payload, event, topic, private, extension)
      values (message_id, payload, event, topic, private, 'broadcast');
  exception when others then
    raise warning 'WarnSendingBroadcastMessage: %', sqlerrm;
  end;
end;
$$;

-- For row-level triggers: broadcast the change as
-- {old_record, record, operation, table, schema} on a private channel.
create or replace function realtime.broadcast_changes(
  topic_name text, event_name text, operation text, table_name text, table_schema text,
  new record, old record, level text default 'ROW')
  returns void
  language plpgsql
  as $$
declare
  change jsonb;
begin
  if level is distinct from 'ROW' then
    raise exception 'realtime.broadcast_changes only supports row level triggers, not %', level;
  end if;
  if operation not in ('INSERT', 'UPDATE', 'DELETE') then
    raise exception 'realtime.broadcast_changes: unexpected operation %', operation;
  end if;
  change := jsonb_build_object(
    'old_record', case when operation in ('UPDATE', 'DELETE') then to_jsonb(old) end,
    'record', case when operation in ('INSERT', 'UPDATE') then to_jsonb(new) end,
    'operation', operation,
    'table', table_name,
    'schema', table_schema);
  perform realtime.send(change, event_name, topic_name, true);
end;
$$;

-- Creates the daily partitions from `first` to `last` (inclusive) that do not exist yet.
create or replace function realtime.create_messages_partitions(first date, last date)
  returns void
  language plpgsql
  as $$
declare
  day date := first;
begin
  while day <= last loop
    execute format(
      'create table if not exists realtime.%I partition of realtime.messages for values from (%L) to (%L)',
      'messages_' || to_char(day, 'YYYY_MM_DD'), day, day + 1);
    day := day + 1;
  end loop;
end;
$$;

-- Drops the daily partitions that end before `cutoff`.
create or replace function realtime.drop_messages_partitions(cutoff timestamp without time zone)
  returns integer
  language plpgsql
  as $$
declare
  partition record;
  dropped integer := 0;
begin
  for partition in
    select c.relname
      from pg_inherits i
      join pg_class c on c.oid = i.inhrelid
     where i.inhparent = 'realtime.messages'::regclass
       and c.relname ~ '^messages_\d{4}_\d{2}_\d{2}$'
  loop
    if to_date(substr(partition.relname, 10), 'YYYY_MM_DD') + 1 <= cutoff then
      execute format('drop table if exists realtime.%I', partition.relname);
      dropped := dropped + 1;
    end if;
  end loop;
  return dropped;
end;
$$;
revoke all on function realtime.create_messages_partitions(date, date) from public;
revoke all on function realtime.drop_messages_partitions(timestamp without time zone) from public;

-- Database broadcasts travel through realtide's replication slot on this publication; the
-- partition root is published so that every daily partition shows up as realtime.messages.
do $$
begin
  if not exists (select 1 from pg_publication where pubname = 'realtide_messages') then
    create publication realtide_messages for table realtime.messages
      with (publish = 'insert', publish_via_partition_root = true);
  end if;
end;
$$;
