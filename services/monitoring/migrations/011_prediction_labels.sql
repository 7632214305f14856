-- The labels of each prediction, shadow prediction and review, computed once when the row is written
-- (prediction_labels: stats.classes_of in SQL, migration 008), so get_stats' REVIEWS_LABEL_DISTRIBUTION_STATS and
-- REVIEWS_CLASSIFICATION_STATS count them in SQL (services/monitoring/stats_columns.py) instead of reading and decoding
-- three JSON columns per reviewed prediction at every call; calling prediction_labels at read time instead costs
-- ~50 us a call, slower than the decoding. A review's labels follow its ground truth: a replaced review (new ground
-- truth) gets its new labels in the same statement, and a review leaves with its prediction.

ALTER TABLE predictions
    ADD COLUMN labels text[] GENERATED ALWAYS AS (prediction_labels(kind, prediction)) STORED,
    ADD COLUMN shadow_labels text[] GENERATED ALWAYS AS (prediction_labels(kind, shadow_prediction)) STORED;

ALTER TABLE reviews ADD COLUMN truth_labels text[];

CREATE FUNCTION review_truth_labels() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    NEW.truth_labels := prediction_labels((SELECT kind FROM predictions WHERE id = NEW.prediction_id),
                                          NEW.ground_truth);
    RETURN NEW;
END
$$;

CREATE TRIGGER reviews_truth_labels BEFORE INSERT OR UPDATE OF ground_truth, prediction_id ON reviews
    FOR EACH ROW EXECUTE FUNCTION review_truth_labels();

UPDATE reviews r SET truth_labels = prediction_labels(p.kind, r.ground_truth) FROM predictions p
WHERE p.id = r.prediction_id;

ALTER TABLE reviews ALTER COLUMN truth_labels SET NOT NULL;

-- the hourly deltas (010) count the stored labels instead of computing them a second time
CREATE OR REPLACE FUNCTION count_prediction_hours() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    direction integer := CASE WHEN TG_OP = 'INSERT' THEN 1 ELSE -1 END;
BEGIN
    INSERT INTO prediction_hour_deltas (deployment_id, hour, model_version, tags, predictions, labels)
    SELECT deployment_id, date_trunc('hour', predicted_at, 'UTC'), coalesce(model_version, 'null'), tags,
           direction * count(DISTINCT p.id), label_counts(array_agg(label) FILTER (WHERE label IS NOT NULL), direction)
    FROM changed_predictions p LEFT JOIN LATERAL unnest(p.labels) AS label ON true
    GROUP BY 1, 2, 3, 4;
    RETURN NULL;
END
$$;
