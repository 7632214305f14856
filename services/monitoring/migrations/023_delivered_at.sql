-- When a training's delivery was recorded (continuous.py _delivered: its version served, its model_swapped written).
-- A delivery closed unrecorded (a newer training delivered meanwhile: "not delivered") keeps its outcome
-- ('deployed'/'shadow') with delivering_since cleared, so that pair alone does not tell a delivered training from a
-- closed one. A challenge's swap is overtaken only by a newer training actually delivered (_swap_overtaken), not by
-- one whose delivery is still under way: the deployer's precondition (only_if_serving) decides between the two
-- deploys. Rows recorded before this column: delivered, not claimed, no reason (a closed delivery has one).
ALTER TABLE trainings ADD COLUMN delivered_at timestamptz;
UPDATE trainings SET delivered_at = updated_at WHERE state = 'done'
    AND outcome IN ('deployed', 'shadow') AND delivering_since IS NULL AND reason IS NULL;
