-- Continuous training suspended by the service: its owner's token was refused (the owner left the workspace or was
-- deactivated), so it is turned off with the reason instead of failing one training per review or assay alert.
-- Cleared by a set-up or a re-activation.
ALTER TABLE continuous_training ADD COLUMN suspended_reason text;
