-- Sensors wait between pokes without holding a slot: when the waiting began, and how many
-- pokes found the condition false.
ALTER TABLE task_instances ADD COLUMN waiting_since INTEGER;
ALTER TABLE task_instances ADD COLUMN pokes INTEGER NOT NULL DEFAULT 0;
