-- How many times the delivery resumer (or a review wake-up) took up a decided challenge's swap (resume_swap) or a
-- training's delivery (resume_deliveries) that had not finished STALE_SWAP after the last try: a deploy the deployer
-- never answers (DeployUnanswered) was tried again every 300 s without end. Past MAX_RESUMES the challenge, or the
-- delivery, is recorded failed with the reason (continuous.py).
ALTER TABLE challenges ADD COLUMN swap_resumes integer NOT NULL DEFAULT 0;
ALTER TABLE trainings ADD COLUMN delivery_resumes integer NOT NULL DEFAULT 0;
