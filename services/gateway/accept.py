"""Which type a route answers for the request's Accept header, or a 406 `not_acceptable` when it lists none of them.

One reading for every route that answers more than one type (datasets/get_rows, pipelines/get_logs, the records
inference route): the first type listed that the route has, parameters dropped (the seed's
`application/json; format=pandas-records` is JSON); `*/*`, `<its default's kind>/*` (`application/*`) or no Accept:
the route's default. q-values are not weighed. A header listing none of them (`text/csv`) was answered JSON with a
200, so a client asking for another format got JSON under a success.
"""

from __future__ import annotations

from shared.errors import NotAcceptable


def answer_type(accept: str, served: tuple[str, ...], route: str) -> str:
    """The type `route` answers: one of `served` (the first is its default); NotAcceptable naming them otherwise."""
    if not accept:  # most clients (the seed's requests.post sends */*, curl */* too)
        return served[0]
    listed = [part.split(";", 1)[0].strip().lower() for part in accept.split(",")]
    listed = [kind for kind in listed if kind]
    default_kind = served[0].split("/", 1)[0]
    for kind in listed:
        if kind in served:
            return kind
        if kind == "*/*" or kind == f"{default_kind}/*":
            return served[0]
    if not listed:
        return served[0]
    raise NotAcceptable(f"{route} answers {', '.join(served)}; the Accept header lists none of them "
                        f"({accept[:200]!r})")
