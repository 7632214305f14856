-- The predictions whose image features are not exactly the stored ones (009's standard_features false: none that
-- image_features wrote), so AGGREGATED_PREDICTIONS_DATA finds their extra feature names through this index instead
-- of reading every matching prediction's JSON keys to learn that there are none (services/monitoring/stats_columns.py).
CREATE INDEX predictions_other_features ON predictions (deployment_id, predicted_at) WHERE NOT standard_features;
