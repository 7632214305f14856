-- An OAuth client's service account (`clients.service_account_id`: the `sub` of its client_credentials tokens) is one
-- client's: UNIQUE now (002 did not say so). The revocation list pages through revoked clients by this key
-- (store.REVOCATION_PARTS: key > the page's last), so two clients sharing one lost the second's revocation when a page
-- ended between them, and revoking one client refused the other's tokens too. Every client is created with a fresh
-- uuid4, so a database has no two sharing one unless rows were copied or written by hand. If it does, the id stays
-- with the client revoked last (its revocation keeps refusing every token of that id issued before it, which covers
-- the others' earlier revocations) or, none revoked, the oldest; each other client of the id gets a new one: its
-- tokens issued since that revocation still verify until they expire, and its next tokens carry the new id.
WITH ranked AS (
    SELECT client_id, row_number() OVER (PARTITION BY service_account_id
                                         ORDER BY revoked_at DESC NULLS LAST, created_at, client_id) AS n
    FROM clients
)
UPDATE clients SET service_account_id = gen_random_uuid()
FROM ranked WHERE ranked.client_id = clients.client_id AND ranked.n > 1;
ALTER TABLE clients ADD CONSTRAINT clients_service_account_id_key UNIQUE (service_account_id);
