-- Log paths relative to the project folder, so a moved or copied project keeps serving its
-- old logs: an absolute path keeps its part from the project's `.nightshift/logs/` on.
UPDATE task_tries
   SET log_path = substr(log_path, instr(log_path, '/.nightshift/logs/') + 1)
 WHERE log_path LIKE '/%' AND instr(log_path, '/.nightshift/logs/') > 0;
