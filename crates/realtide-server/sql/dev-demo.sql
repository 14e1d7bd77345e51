-- The demo table of `realtide dev`: each user reads their own rows; changes stream to
-- postgres_changes subscribers through the supabase_realtime publication.
create table if not exists public.todos (
  id bigint generated always as identity primary key,
  owner uuid not null default auth.uid(),
  title text not null,
  done boolean not null default false,
  inserted_at timestamptz not null default now()
);
alter table public.todos enable row level security;
drop policy if exists "owners read their todos" on public.todos;
create policy "owners read their todos" on public.todos for select to authenticated using (owner = auth.uid());
drop policy if exists "owners write their todos" on public.todos;
create policy "owners write their todos" on public.todos for insert to authenticated with check (owner = auth.uid());
grant select, insert, update, delete on public.todos to authenticated;
grant all on public.todos to service_role;
do $$ begin
  if not exists (select 1 from pg_publication where pubname = 'supabase_realtime') then
    create publication supabase_realtime;
  end if;
  if not exists (select 1 from pg_publication_tables where pubname = 'supabase_realtime' and schemaname = 'public' and tablename = 'todos') then
    alter publication supabase_realtime add table public.todos;
  end if;
end $$;
