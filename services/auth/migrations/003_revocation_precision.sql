-- Deactivation and re-activation can happen within one second; comparing whole seconds refused the
-- first tokens issued after re-activation. Token `iat` and this moment are now fractional epoch seconds.
ALTER TABLE users ALTER COLUMN revoked_before TYPE double precision;
