-- The fields Mosaic Stack's federation list verb returns for each resource (issue 17), so a
-- Mosaic peer reading tessera gets the rows it expects:
--   tasks:          assignee, tags, due_date, metadata (updated_at existed)
--   mission_tasks:  updated_at (the note text stays in `notes`; the wire calls it `content`)
--   insights:       source (the wire's `kind`, as Mosaic sets it), relevance_score, metadata, updated_at
--   preferences:    source, mutable, updated_at (the wire's `kind` is `category`, as in Mosaic)
--
-- Existing rows keep their data: new columns are nullable or have a constant default, and
-- updated_at starts at created_at (a row never touched since was last updated when created).

alter table tasks
    add column assignee text,
    add column tags     text[] not null default '{}',
    add column due_date timestamptz,
    add column metadata jsonb;

alter table mission_tasks add column updated_at timestamptz;
update mission_tasks set updated_at = created_at;
alter table mission_tasks alter column updated_at set default now(), alter column updated_at set not null;

alter table insights
    add column source          text not null default 'agent',
    add column relevance_score real not null default 1.0,
    add column metadata        jsonb,
    add column updated_at      timestamptz;
update insights set updated_at = created_at;
alter table insights alter column updated_at set default now(), alter column updated_at set not null;

alter table preferences
    add column source     text,
    add column mutable    boolean not null default true,
    add column updated_at timestamptz;
update preferences set updated_at = created_at;
alter table preferences alter column updated_at set default now(), alter column updated_at set not null;

-- updated_at is maintained on every update that changes the row and does not set updated_at
-- itself. An update that changes nothing (an idempotent re-run of `storage migrate-tier`)
-- leaves it alone, and so does one that carries its own value (an import keeping history).
create function touch_updated_at() returns trigger language plpgsql as $$
begin
    if new.updated_at is not distinct from old.updated_at and new is distinct from old then
        new.updated_at := now();
    end if;
    return new;
end
$$;

create trigger tasks_touch_updated_at before update on tasks
    for each row execute function touch_updated_at();
create trigger mission_tasks_touch_updated_at before update on mission_tasks
    for each row execute function touch_updated_at();
create trigger insights_touch_updated_at before update on insights
    for each row execute function touch_updated_at();
create trigger preferences_touch_updated_at before update on preferences
    for each row execute function touch_updated_at();
