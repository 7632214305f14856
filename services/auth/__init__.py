"""The auth service: owns users, password hashes, clients, tokens, workspaces, membership and roles."""
