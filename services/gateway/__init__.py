"""The gateway: the only public HTTP entry (`/v1/api/...`, token endpoint, docs, UI). It holds nothing
persistent and no business rules: it authenticates, converts formats and forwards commands on the bus."""
