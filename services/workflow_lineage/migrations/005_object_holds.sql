-- Objects an upload is about to refer to (the garbage collector keeps them for an hour whatever their references
-- say). An upload holds its hash under a per-hash advisory lock before it looks for the object, and the collector
-- re-checks references and holds under the same lock before it deletes one, so an upload that finds an object
-- present never loses it to a concurrent collection.
CREATE TABLE object_holds (
    id      uuid PRIMARY KEY,  -- one per upload: two uploads of the same bytes each hold them
    sha256  text NOT NULL,
    held_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX object_holds_sha ON object_holds (sha256);
