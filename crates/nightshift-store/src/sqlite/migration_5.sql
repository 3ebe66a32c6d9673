-- Interruptions by nightshift itself (its crash, SIGKILL, OOM kill, shutdown) do not use up a
-- task's retries: `interruptions` counts them in a row, and a task interrupted more than
-- three times in a row fails. `warning` on a try records a problem that did not change its
-- outcome (its log could not be written, it was cut at the size cap).
ALTER TABLE task_instances ADD COLUMN interruptions INTEGER NOT NULL DEFAULT 0;
ALTER TABLE task_tries ADD COLUMN warning TEXT;
