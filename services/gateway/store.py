"""The gateway keeps no tables: every resource belongs to the service that owns it."""
