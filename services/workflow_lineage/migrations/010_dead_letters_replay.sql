-- Dead letters an operator can name and replay (`railyard dead-letters list|replay`, shared/dead_letters.py): an id
-- (the rows written before get theirs now), and when a row was replayed with the message id it was published under.
ALTER TABLE dead_letters ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY UNIQUE;
ALTER TABLE dead_letters ADD COLUMN replayed_at timestamptz, ADD COLUMN replay_msg_id text;
