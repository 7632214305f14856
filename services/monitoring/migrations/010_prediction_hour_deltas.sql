-- The hourly aggregate (008) without a lock per prediction. 008's row trigger upserted the hour's row of each written
-- prediction, so concurrent predictions of one deployment, hour, model version and tag set waited for each other's
-- commit on that row (8 writers of one key: ~550 inserts/s against ~1,200 with one key each and ~2,200 without the
-- trigger), and a bulk write paid one upsert per row. Now a statement's predictions are counted once per statement,
-- grouped by key, into prediction_hour_deltas, which is only ever inserted into: no writer waits for another. The
-- monitoring service folds the deltas into prediction_hours every minute (fold_prediction_hours, one fold at a time);
-- get_stats sums both tables in one snapshot, so a delta is counted exactly once before, during and after its fold
-- (services/monitoring/aggregates.py).

CREATE TABLE prediction_hour_deltas (
    deployment_id  integer NOT NULL,
    hour           timestamptz NOT NULL,
    model_version  jsonb NOT NULL,
    tags           text[] NOT NULL,
    predictions    bigint NOT NULL,               -- negative for deleted predictions
    labels         jsonb NOT NULL                 -- {label: count}, negative counts likewise
);
CREATE INDEX prediction_hour_deltas_deployment ON prediction_hour_deltas (deployment_id, hour);

DROP TRIGGER predictions_count_hour ON predictions;
DROP FUNCTION count_prediction_hour();

-- one delta per key that a statement's rows touch (both triggers name their transition table changed_predictions)
CREATE FUNCTION count_prediction_hours() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    direction integer := CASE WHEN TG_OP = 'INSERT' THEN 1 ELSE -1 END;
BEGIN
    INSERT INTO prediction_hour_deltas (deployment_id, hour, model_version, tags, predictions, labels)
    SELECT deployment_id, date_trunc('hour', predicted_at, 'UTC'), coalesce(model_version, 'null'), tags,
           direction * count(DISTINCT p.id), label_counts(array_agg(label) FILTER (WHERE label IS NOT NULL), direction)
    FROM changed_predictions p LEFT JOIN LATERAL unnest(prediction_labels(p.kind, p.prediction)) AS label ON true
    GROUP BY 1, 2, 3, 4;
    RETURN NULL;
END
$$;

CREATE TRIGGER predictions_count_inserted AFTER INSERT ON predictions
    REFERENCING NEW TABLE AS changed_predictions FOR EACH STATEMENT EXECUTE FUNCTION count_prediction_hours();
CREATE TRIGGER predictions_count_deleted AFTER DELETE ON predictions
    REFERENCING OLD TABLE AS changed_predictions FOR EACH STATEMENT EXECUTE FUNCTION count_prediction_hours();

-- move every delta into prediction_hours; how many hour rows it wrote. Folds run one at a time (the advisory lock),
-- so two never upsert the same hours in opposite orders; a writer never waits for a fold.
CREATE FUNCTION fold_prediction_hours() RETURNS bigint
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    written bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('monitoring.fold_prediction_hours'));
    WITH moved AS (DELETE FROM prediction_hour_deltas RETURNING *),
    counted AS (
        SELECT deployment_id, hour, model_version, tags, sum(predictions) AS predictions
        FROM moved GROUP BY 1, 2, 3, 4),
    labelled AS (
        SELECT deployment_id, hour, model_version, tags, jsonb_object_agg(key, n) AS labels
        FROM (SELECT deployment_id, hour, model_version, tags, key, sum(value::bigint) AS n
              FROM moved, jsonb_each_text(labels) GROUP BY 1, 2, 3, 4, 5) summed
        WHERE n <> 0 GROUP BY 1, 2, 3, 4)
    INSERT INTO prediction_hours AS h (deployment_id, hour, model_version, tags, predictions, labels)
    SELECT c.deployment_id, c.hour, c.model_version, c.tags, c.predictions, coalesce(l.labels, '{}')
    FROM counted c LEFT JOIN labelled l USING (deployment_id, hour, model_version, tags)
    ON CONFLICT (deployment_id, hour, model_version, tags) DO UPDATE
        SET predictions = h.predictions + EXCLUDED.predictions,
            labels = add_label_counts(h.labels, EXCLUDED.labels);
    GET DIAGNOSTICS written = ROW_COUNT;
    RETURN written;
END
$$;
