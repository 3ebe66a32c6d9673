-- A claim batch in one round trip. Before, a claim was six (begin, the limits' locks, the
-- free instances, the running counts, the claim, commit), and an engine's pass waited on
-- each while the host was busy with the tries it had started.
--
-- The function does what the client did, in the same order, inside the statement's own
-- transaction: it takes the advisory locks of the batch's pipelines and pools (sorted by
-- bytes, as every claimer does), then reads under fresh snapshots (a volatile function's
-- statements each take one), so it sees every claim committed by a claimer it waited for.
--
-- `free` holds the positions (from 1) of the candidates that are free and now locked.
-- Arguments are parallel arrays, one element per candidate in the caller's order: `pools`
-- holds NULL for a task without a pool. `most` bounds how many are taken; `lock_most`, when
-- not NULL, how many free instances are locked (without pools only the first `most` can be
-- taken, and the rest stay free for other claimers). Returns the taken instances and their
-- new try numbers.
CREATE OR REPLACE FUNCTION nightshift_claim(
    ids BIGINT[], nows BIGINT[], pipelines TEXT[], pipeline_max BIGINT[], pools TEXT[],
    pool_slots BIGINT[], owners TEXT[], hosts TEXT[], leases BIGINT[], most BIGINT,
    lock_most BIGINT)
RETURNS TABLE (claimed_ti BIGINT, claimed_try BIGINT)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    lock_name TEXT;
    free BIGINT[];
    i BIGINT;
    counts JSONB := '{}';
    k_pipe TEXT;
    k_pool TEXT;
    n BIGINT;
    taken INT := 0;
    take_ids BIGINT[] := '{}';
    take_owners TEXT[] := '{}';
    take_hosts TEXT[] := '{}';
    take_leases BIGINT[] := '{}';
    take_nows BIGINT[] := '{}';
BEGIN
    FOR lock_name IN
        SELECT x FROM (
            SELECT 'tasks:' || p AS x FROM unnest(pipelines) AS p
            UNION
            SELECT 'pool:' || q FROM unnest(pools) AS q WHERE q IS NOT NULL) AS names
        ORDER BY x COLLATE "C"
    LOOP
        PERFORM pg_advisory_xact_lock(hashtextextended(lock_name, 0));
    END LOOP;

    SELECT array_agg(ord ORDER BY ord) INTO free FROM (
        SELECT c.ord FROM task_instances t
        JOIN unnest(ids, nows) WITH ORDINALITY AS c(id, now, ord) ON t.id = c.id
        WHERE t.state IN ('QUEUED', 'UP_FOR_RETRY') AND (t.next_try_at IS NULL OR t.next_try_at <= c.now)
        ORDER BY c.ord LIMIT lock_most
        FOR UPDATE OF t SKIP LOCKED) AS f;
    IF free IS NULL THEN
        RETURN;
    END IF;

    -- What runs now in the pipelines and pools concerned: the locks above keep it true
    -- until this transaction ends.
    SELECT COALESCE(jsonb_object_agg(key, cnt), '{}') INTO counts FROM (
        SELECT 't:' || pipeline AS key, COUNT(*) AS cnt FROM task_instances
         WHERE state = 'RUNNING' AND pipeline = ANY(pipelines) GROUP BY pipeline
        UNION ALL
        SELECT 'p:' || pool, COUNT(*) FROM task_instances
         WHERE state = 'RUNNING' AND pool = ANY(pools) GROUP BY pool) AS running;

    -- Taken in the order given, as long as the limits allow.
    FOREACH i IN ARRAY free LOOP
        EXIT WHEN taken >= most;
        k_pipe := 't:' || pipelines[i];
        n := COALESCE((counts ->> k_pipe)::BIGINT, 0);
        CONTINUE WHEN n >= pipeline_max[i];
        IF pools[i] IS NOT NULL THEN
            k_pool := 'p:' || pools[i];
            CONTINUE WHEN COALESCE((counts ->> k_pool)::BIGINT, 0) >= pool_slots[i];
            counts := jsonb_set(counts, ARRAY[k_pool], to_jsonb(COALESCE((counts ->> k_pool)::BIGINT, 0) + 1));
        END IF;
        counts := jsonb_set(counts, ARRAY[k_pipe], to_jsonb(n + 1));
        taken := taken + 1;
        take_ids := take_ids || ids[i];
        take_owners := take_owners || owners[i];
        take_hosts := take_hosts || hosts[i];
        take_leases := take_leases || leases[i];
        take_nows := take_nows || nows[i];
    END LOOP;
    IF taken = 0 THEN
        RETURN;
    END IF;

    -- The claim and its try rows in one statement.
    RETURN QUERY
    WITH c AS (
        SELECT * FROM unnest(take_ids, take_owners, take_hosts, take_leases, take_nows)
        AS c(id, owner, host, lease_until, now)),
    claimed AS (
        UPDATE task_instances t
        SET state = 'RUNNING', try_number = t.try_number + 1, owner = c.owner, host = c.host, lease_until = c.lease_until,
            pid = NULL, pid_start = NULL, next_try_at = NULL, updated_at = c.now
        FROM c WHERE t.id = c.id AND t.state IN ('QUEUED', 'UP_FOR_RETRY')
        RETURNING t.id, t.run, t.task_id, t.try_number, c.now, c.host)
    INSERT INTO task_tries (ti, run, task_id, try_number, state, start_time, host)
    SELECT id, run, task_id, try_number, 'RUNNING', now, host FROM claimed
    RETURNING ti, try_number;
END
$$;
