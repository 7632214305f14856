-- Arrows an event draws to a card it names only by a data field (a model by name, a pipeline's deployment by the
-- pipeline's id), kept so that the arrow is drawn, or moved, when the card it should come from is drawn later:
-- the service draws events concurrently and in any order (docs/lineage.md "Order of events"). `kinds` are the
-- candidates' kinds, most preferred first; `as_of` is the naming event's occurred_at: the preferred candidate is
-- the newest one whose own event happened no later (graph.py _resolve); `source` is the card the arrow comes from
-- now (NULL: none yet).
CREATE TABLE link_refs (
    id           bigserial PRIMARY KEY,
    workspace_id bigint NOT NULL,
    target       bigint NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    relation     text NOT NULL,
    kinds        text[] NOT NULL,
    match_key    text NOT NULL,
    match_value  text NOT NULL,
    as_of        timestamptz NOT NULL,
    source       bigint REFERENCES nodes (id) ON DELETE SET NULL,
    UNIQUE (target, relation, match_key, match_value)
);
CREATE INDEX link_refs_waiting ON link_refs (workspace_id, match_key, match_value);

-- The cards such a name may resolve to carry their event's time (`data.occurred_at`); the cards drawn before this
-- migration get the time they were drawn.
UPDATE nodes SET data = data || jsonb_build_object('occurred_at', created_at)
WHERE kind IN ('model_version', 'pipeline_version', 'deployment') AND NOT data ? 'occurred_at'
  AND (data ? 'name' OR data ? 'pipeline_id');
