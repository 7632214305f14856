-- Dead letters keyed by the message's time in the stream too (shared/consumers.py). By (durable, stream sequence)
-- alone, a stream deleted and made again (its sequences restart at 1) gave a new poison message the key of an old
-- one's row: the insert did nothing, and the new message was terminated unrecorded. The stream time is the same at
-- every redelivery of a message, so a redelivery after a crash between the insert and the term still adds nothing.
-- Rows written before have no stream time ('-infinity'): a redelivery of one of those not yet terminated (a crash
-- across this upgrade) adds a second row for it, with its time. An older process's insert (without the column)
-- fails: its message is redelivered, never terminated unrecorded.
ALTER TABLE dead_letters ADD COLUMN stream_time timestamptz NOT NULL DEFAULT '-infinity';
ALTER TABLE dead_letters ALTER COLUMN stream_time DROP DEFAULT;
ALTER TABLE dead_letters DROP CONSTRAINT dead_letters_pkey, ADD PRIMARY KEY (durable, stream_seq, stream_time);
