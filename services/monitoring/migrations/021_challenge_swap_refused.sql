-- A decided challenge whose swap auth refused for continuous deployment's owner (the owner left the workspace or was
-- deactivated: continuous deployment suspended, migration 020) keeps the decision it was refused ('promoting' or
-- 'rolling_back') while it shows 'failed': a set-up or a re-activation of continuous deployment moves it back to that
-- state and swaps it, unless a newer challenge or a newer training's delivery came since (continuous.py,
-- redo_refused_swap).
ALTER TABLE challenges ADD COLUMN swap_refused text CHECK (swap_refused IN ('promoting', 'rolling_back'));
