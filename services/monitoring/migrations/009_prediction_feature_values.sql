-- get_stats' feature columns (services/monitoring/stats_columns.py, docs/monitoring.md "Pre-aggregation"): each
-- prediction's image features as numbers, computed once when the row is written, so the outlying score, the drift and
-- AGGREGATED_PREDICTIONS_DATA read floats instead of parsing 10 JSON numbers per prediction at every call (that parse
-- was most of their time at 100,000 predictions). feature_values holds shared/images.FEATURE_NAMES in that order
-- (stats_columns.STORED_FEATURES), NULL where the prediction has no number for the name, the same float PostgreSQL's
-- (and Python's) correctly rounded parse of the JSON number gives; standard_features says the features are exactly
-- those names, so the names a window holds need no look into the JSON unless some prediction has others.

ALTER TABLE predictions
    ADD COLUMN feature_values float8[] GENERATED ALWAYS AS (ARRAY[
        CASE WHEN jsonb_typeof(features -> 'height') = 'number' THEN (features ->> 'height')::float8 END,
        CASE WHEN jsonb_typeof(features -> 'width') = 'number' THEN (features ->> 'width')::float8 END,
        CASE WHEN jsonb_typeof(features -> 'brightness_mean') = 'number' THEN (features ->> 'brightness_mean')::float8 END,
        CASE WHEN jsonb_typeof(features -> 'brightness_std') = 'number' THEN (features ->> 'brightness_std')::float8 END,
        CASE WHEN jsonb_typeof(features -> 'red_mean') = 'number' THEN (features ->> 'red_mean')::float8 END,
        CASE WHEN jsonb_typeof(features -> 'red_std') = 'number' THEN (features ->> 'red_std')::float8 END,
        CASE WHEN jsonb_typeof(features -> 'green_mean') = 'number' THEN (features ->> 'green_mean')::float8 END,
        CASE WHEN jsonb_typeof(features -> 'green_std') = 'number' THEN (features ->> 'green_std')::float8 END,
        CASE WHEN jsonb_typeof(features -> 'blue_mean') = 'number' THEN (features ->> 'blue_mean')::float8 END,
        CASE WHEN jsonb_typeof(features -> 'blue_std') = 'number' THEN (features ->> 'blue_std')::float8 END
    ]) STORED,
    ADD COLUMN standard_features boolean GENERATED ALWAYS AS (
        CASE WHEN jsonb_typeof(features) = 'object'
             THEN features ?& ARRAY['height', 'width', 'brightness_mean', 'brightness_std', 'red_mean', 'red_std', 'green_mean', 'green_std', 'blue_mean', 'blue_std']
                  AND features - ARRAY['height', 'width', 'brightness_mean', 'brightness_std', 'red_mean', 'red_std', 'green_mean', 'green_std', 'blue_mean', 'blue_std']::text[] = '{}'::jsonb
             ELSE false END) STORED;
