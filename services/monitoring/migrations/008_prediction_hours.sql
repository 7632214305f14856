-- get_stats' pre-aggregation (services/monitoring/aggregates.py, docs/monitoring.md "Pre-aggregation"): the predicted
-- class labels of a deployment's predictions counted per UTC hour of predicted_at, per champion model version and
-- per tag set (the filters get_stats offers), kept by triggers in the transaction that writes or deletes the
-- prediction, so the counts are exactly those of the rows committed (no sweep, no lag, nothing to recompute). The
-- functions keep the schema's search path, so a write from any connection counts the same.

CREATE TABLE prediction_hours (
    deployment_id  integer NOT NULL,
    hour           timestamptz NOT NULL,           -- date_trunc('hour', predicted_at, 'UTC')
    model_version  jsonb NOT NULL,                 -- the prediction's model_version ('null' for none)
    tags           text[] NOT NULL,
    predictions    bigint NOT NULL,
    labels         jsonb NOT NULL,                 -- {label: count}: stats.classes_of each prediction
    PRIMARY KEY (deployment_id, hour, model_version, tags)
);

-- the length of a JSON array, NULL for anything else (a null or absent field counts as no list, as in stats.py)
CREATE FUNCTION json_list_length(value jsonb) RETURNS integer
LANGUAGE sql IMMUTABLE SET search_path FROM CURRENT AS $$
    SELECT CASE WHEN jsonb_typeof(value) = 'array' THEN jsonb_array_length(value) END
$$;

-- stats.classes_of in SQL: a classification's top class (the first of the highest scores; the first class when the
-- scores do not pair with the classes) as an integer's text, every class of a detection or segmentation as written
CREATE FUNCTION prediction_labels(kind text, prediction jsonb) RETURNS text[]
LANGUAGE sql IMMUTABLE SET search_path FROM CURRENT AS $$
    SELECT CASE
        WHEN coalesce(json_list_length(prediction -> 'detection_classes'), 0) = 0 THEN '{}'::text[]
        WHEN kind <> 'classification' THEN
            ARRAY(SELECT c ->> 0 FROM jsonb_array_elements(prediction -> 'detection_classes') WITH ORDINALITY
                  AS e(c, i) ORDER BY i)
        WHEN coalesce(json_list_length(prediction -> 'detection_scores'), -1)
             <> json_list_length(prediction -> 'detection_classes') THEN
            ARRAY[trunc((prediction -> 'detection_classes' ->> 0)::numeric)::bigint::text]
        ELSE ARRAY(SELECT trunc((prediction -> 'detection_classes' ->> (i - 1)::int)::numeric)::bigint::text
                   FROM jsonb_array_elements(prediction -> 'detection_scores') WITH ORDINALITY AS s(score, i)
                   ORDER BY (score #>> '{}')::numeric DESC NULLS LAST, i LIMIT 1)
    END
$$;

CREATE FUNCTION label_counts(labels text[], sign integer) RETURNS jsonb
LANGUAGE sql IMMUTABLE SET search_path FROM CURRENT AS $$
    SELECT coalesce(jsonb_object_agg(label, n * sign), '{}'::jsonb)
    FROM (SELECT label, count(*) AS n FROM unnest(labels) AS label GROUP BY label) counted
$$;

-- {a: 1, b: 2} + {b: 1, c: 1} = {a: 1, b: 3, c: 1}; a label counted down to 0 is dropped
CREATE FUNCTION add_label_counts(total jsonb, more jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE SET search_path FROM CURRENT AS $$
    SELECT coalesce(jsonb_object_agg(key, n), '{}'::jsonb) FROM (
        SELECT key, sum(value::bigint) AS n
        FROM (SELECT * FROM jsonb_each_text(total) UNION ALL SELECT * FROM jsonb_each_text(more)) pairs
        GROUP BY key) summed
    WHERE n <> 0
$$;

CREATE FUNCTION count_prediction_hour() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    row record;
    sign integer;
BEGIN
    IF TG_OP = 'INSERT' THEN row := NEW; sign := 1; ELSE row := OLD; sign := -1; END IF;
    INSERT INTO prediction_hours AS h (deployment_id, hour, model_version, tags, predictions, labels)
    VALUES (row.deployment_id, date_trunc('hour', row.predicted_at, 'UTC'), coalesce(row.model_version, 'null'),
            row.tags, sign, label_counts(prediction_labels(row.kind, row.prediction), sign))
    ON CONFLICT (deployment_id, hour, model_version, tags) DO UPDATE
        SET predictions = h.predictions + EXCLUDED.predictions,
            labels = add_label_counts(h.labels, EXCLUDED.labels);
    RETURN NULL;
END
$$;

CREATE TRIGGER predictions_count_hour AFTER INSERT OR DELETE ON predictions
    FOR EACH ROW EXECUTE FUNCTION count_prediction_hour();

-- the predictions already kept
INSERT INTO prediction_hours (deployment_id, hour, model_version, tags, predictions, labels)
SELECT deployment_id, date_trunc('hour', predicted_at, 'UTC'), coalesce(model_version, 'null'), tags, count(DISTINCT p.id),
       label_counts(array_agg(label) FILTER (WHERE label IS NOT NULL), 1)
FROM predictions p LEFT JOIN LATERAL unnest(prediction_labels(p.kind, p.prediction)) AS label ON true
GROUP BY 1, 2, 3, 4;
