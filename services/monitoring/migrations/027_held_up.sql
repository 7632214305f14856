-- What last held up a training's delivery or a challenge's swap that was left for the resume STALE_SWAP later (a 503,
-- 504 or 429 before or from its deploy, its deploy unanswered or held up behind another, a deploy refused twice since
-- what serves changed): "<status> <code>: <message>", at most 300 characters (continuous.py _held_up), written at each
-- such try while the delivery is still claimed / the challenge still decided. The reason a give-up past MAX_RESUMES
-- writes (what users read in retrieve_information) quotes it; before, it was in the WARNING log only. NULL: nothing
-- held it up (or it was before this column). Nullable columns without a default: no row is rewritten.
ALTER TABLE trainings ADD COLUMN delivery_held_up text;
ALTER TABLE challenges ADD COLUMN swap_held_up text;
