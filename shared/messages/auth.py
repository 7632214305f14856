"""Messages of the auth service: tokens and keys, users, workspaces and membership, features.

Request fields and reply shapes follow the seed's "Users", "Workspaces" and "Enablement Management"
sections; field names are the seed's, including Keycloak's camelCase in user records.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import Field

from shared.messages.base import Command, Event, Message, omit_when_unset
from shared.paging import MAX_PAGE, NextCursor, cursor_field, key_cursor_field, limit_field

# --- tokens and keys -------------------------------------------------------------------------------

SOURCE_CHARS = 128
"""The longest `source` a sign-in command takes. The gateway sends what services/gateway/source_address.py's
counted_as gives: an IPv4 address (at most 15 characters), an IPv6 address's /64 (at most 24), or a peer that is no
address as the ASGI server named it, cut to its first SOURCE_CHARS characters (`unknown` without one). Failed logins
are counted per source, in auth's database and memory, so a source of any length was a row and a key of any size."""

NAME_CHARS = 254
"""The longest user name or email a command takes: RFC 5321's longest address (254 octets), as invited users' user
names are their emails (the first admin's is `admin`). A sign-in's name is lowered and hashed by PostgreSQL in each of
its statements (docs/auth.md, "Brute force"), so an unbounded one cost ~80 ms of them a try for a 1 MB name; a
longer one is 400 invalid_request, on the bus and at the gateway, before any statement."""


SECRET_CHARS = 4096
"""The longest password or client secret a command takes (4 KiB, as Django bounded passwords for CVE-2013-1443).
argon2 takes a password of any length, but pre-hashes all of it in the check's hashing turn (2 at a time per auth
process), and every hop carries and parses it whole: a 2 MiB password cost 6.5-9 ms of CPU in argon2's pre-hash and
9-11 ms of JSON a hop, 1 or 4 KiB ~0.04 and ~0.02 ms, beside ~200-235 ms a check at the default cost (in process,
session 42, load 7-10). A longer one is 400 invalid_request, on the bus and at the gateway, before any hash or
database statement; people do not type 4096 characters, and password managers' longest are 64-128."""

TOKEN_CHARS = 8192
"""The longest refresh token a command takes: ours are RS256 JWTs of ~0.7 KB (a 2048-bit key), 8192 leaves room for
larger keys and claims; the logout endpoint's bound since it came (73b2f544)."""


CLIENT_ID_CHARS = 128
"""The longest client id a command takes. Ours are `api-client` (RAILYARD_AUTH__BOOTSTRAP_CLIENT_ID, bounded alike in
shared/settings.py), `railyard-ui` and `inference-` with 16 hex digits (26 characters). The token route put the id it
was sent (up to a 1 MiB form field) into its client bucket's key (services/gateway/ratelimit.py) and auth looked it up;
a longer one is refused before either: 400 invalid_request naming the field, or, sent in HTTP Basic, 401
invalid_client (docs/auth.md, "Brute force")."""

CODE_CHARS = 256
"""The longest authorization code the token route takes: ours are 43 characters (secrets.token_urlsafe(32)). A code
is hashed and looked up (and spent) before anything else is checked, so a longer one is refused before that."""

CODE_VERIFIER_CHARS = 128
"""RFC 7636 4.1: a PKCE code_verifier is 43 to 128 characters. A longer one is refused before the code is looked up
(and spent); a shorter one or of other characters is refused by auth as not matching the challenge (invalid_grant)."""

SCOPE_CHARS = 1024
"""The longest `scope` a token request takes. Railyard grants `profile email` whatever is asked (docs/auth.md); the
field is carried on the bus only, so it needs no more than a few names."""

REDIRECT_URI_CHARS = 2048
"""The longest redirect URI a command takes (AuthorizeUser's, and the authorization_code grant's, which must equal
it). Ours is the UI's page, the gateway's public URL and '/'; 2048 is what browsers and servers commonly take in a
URL. The code grant's was carried whole and compared after the code was looked up and spent."""

CODE_CHALLENGE_CHARS = 128
"""RFC 7636 4.2: a code_challenge is 43 to 128 characters (S256's, the only method taken, is 43; auth refuses any
other). Bounded on the bus: the sign-in page checks the 43, auth looked its client up before its own check."""


def secret_field(description: str | None = None) -> Any:
    """A password or client secret field, at most SECRET_CHARS characters."""
    return Field(max_length=SECRET_CHARS, description=description)


def optional_secret_field(description: str | None = None) -> Any:
    """An optional password field, at most SECRET_CHARS characters."""
    return Field(None, max_length=SECRET_CHARS, description=description)


def name_field(description: str | None = None) -> Any:
    """A user name or email field, at most NAME_CHARS characters."""
    return Field(max_length=NAME_CHARS, description=description)


def optional_name_field(description: str | None = None) -> Any:
    """An optional user name or email field, at most NAME_CHARS characters."""
    return Field(None, max_length=NAME_CHARS, description=description)


class IssueToken(Command):
    """An OAuth2 token request (password, refresh_token, client_credentials or authorization_code grant)."""

    grant_type: str
    client_id: str = Field(max_length=CLIENT_ID_CHARS, description="The client's id (at most 128 characters).")
    client_secret: str = secret_field("The client's secret (empty for a public client; at most 4096 characters).")
    username: str | None = optional_name_field("password grant: the user name or email (at most 254 characters).")
    password: str | None = optional_secret_field("password grant: the user's password (at most 4096 characters).")
    refresh_token: str | None = Field(None, max_length=TOKEN_CHARS, description="refresh_token grant: the refresh "
                                      "token (at most 8192 characters).")
    scope: str | None = Field(None, max_length=SCOPE_CHARS, description="The scope asked for (at most 1024 "
                              "characters); tokens carry `profile email` whatever it says.")
    source: str | None = Field(None, max_length=SOURCE_CHARS, description="The client's source as the gateway counts "
                               "it (services/gateway/source_address.py counted_as): an IPv4 address as it is, an IPv6 "
                               "address's /64 (2001:db8:1:2::/64). Failed sign-ins are counted and locked per name "
                               "tried and source. At most 128 characters (400 invalid_request).")
    code: str | None = Field(None, max_length=CODE_CHARS, description="authorization_code grant: the code the "
                             "authorization endpoint issued (at most 256 characters).")
    code_verifier: str | None = Field(None, max_length=CODE_VERIFIER_CHARS, description="authorization_code grant: "
                                      "the PKCE verifier whose S256 hash is the code's challenge (RFC 7636: 43 to 128 "
                                      "characters).")
    redirect_uri: str | None = Field(None, max_length=REDIRECT_URI_CHARS, description="authorization_code grant: "
                                     "the redirect URI the code was issued for, exactly (at most 2048 characters).")


class EndSession(Command):
    """The logout endpoint (Keycloak's `.../protocol/openid-connect/logout`): the client (its secret, or a public
    client's id alone) ends the sign-in session of a refresh token it was issued, so neither that refresh token nor any
    token of its session works any longer."""

    client_id: str = Field(max_length=CLIENT_ID_CHARS, description="The client's id (at most 128 characters).")
    client_secret: str = secret_field("The client's secret (empty for a public client; at most 4096 characters).")
    refresh_token: str = Field(max_length=TOKEN_CHARS, description="The refresh token of the session to end (at most "
                               "8192 characters).")


class AuthorizeUser(Command):
    """The authorization endpoint's sign-in (authorization code flow with PKCE, RFC 7636): a user's password checked
    as the password grant checks it, for a public client, answered with a one-time code."""

    client_id: str = Field(max_length=CLIENT_ID_CHARS, description="The client's id (at most 128 characters).")
    redirect_uri: str = Field(max_length=REDIRECT_URI_CHARS, description="Where the code goes; the gateway has "
                              "checked it is the client's registered URI (at most 2048 characters).")
    code_challenge: str = Field(max_length=CODE_CHALLENGE_CHARS, description="BASE64URL(SHA-256(code_verifier)), 43 "
                                "characters (S256 only; RFC 7636 bounds a challenge at 128).")
    username: str = name_field("The user name or email (at most 254 characters).")
    password: str = secret_field("The user's password (at most 4096 characters).")
    source: str | None = Field(None, max_length=SOURCE_CHARS, description="The client's source as the gateway counts "
                               "it (an IPv4 address, an IPv6 address's /64), for failed logins, as IssueToken.source "
                               "(at most 128 characters).")


class AuthorizationCodeIssued(Message):
    """A one-time authorization code, bound to the client, redirect URI and code challenge."""

    code: str
    expires_in: int


class TokenIssued(Message):
    """The OAuth2 token response."""

    access_token: str
    expires_in: int
    token_type: Literal["Bearer"] = "Bearer"
    refresh_token: str | None = None
    refresh_expires_in: int | None = None
    scope: str = "profile email"
    session_state: str | None = None


class GetSigningKeys(Command):
    """The public keys that verify tokens (JWKS)."""


class SigningKeys(Message):
    """A JSON Web Key Set."""

    keys: list[dict[str, Any]]


class RotateSigningKey(Command):
    """Make a new signing key active; older keys keep verifying until their tokens expire."""


class SigningKeyRotated(Message):
    """The new active key id."""

    kid: str


class ListRevocations(Command):
    """Users whose tokens issued before a moment no longer count (deactivated users), and revoked sessions: a page of
    them, from the start or after `after` (the previous page's `next`)."""

    after: str | None = Field(None, max_length=1024, description="The previous page's `next`; none: the first page.")
    since: str | None = Field(None, max_length=20, description=(
        "A previous answer's `position`: only the revocations written since then (pages likewise, with `after`), "
        "and this read's `position`; 409 `revocation_position_lost` when they can no longer be told (read the whole "
        "list). None: the whole list."))
    with_position: bool = Field(False, description=(
        "The whole list, each page naming the `position` to ask for changes from next (a reader keeps the first "
        "page's)."))
    with_keys: bool = Field(False, description=(
        "The first page (and a read of changes) names `keys`, the signing keys' fingerprint: a verifier reads the "
        "JWKS again when it changes. Sent only by verifiers of session 33 on: an older auth refuses the field."))


class Revocations(Message):
    """user id -> tokens issued at or before this moment (epoch seconds) are refused; and revoked sessions."""

    users: dict[str, float]
    sessions: dict[str, float] = Field(default_factory=dict, description="session (a token's session_state) -> "
                                       "when it was revoked (epoch s): every token of it is refused, whenever issued. "
                                       "Listed while an access token of it could still be valid.")
    session_expiry: dict[str, float] = Field(default_factory=dict, description=(
        "Sessions among `sessions` whose tokens may outlive access_token_ttl (a task run's, revoked at the run's "
        "end) -> when the last of them expires (epoch s): a verifier keeps the revocation until then."))
    next: str | None = Field(None, description=(
        "More entries follow (the list is answered in pages that fit the bus): ask again with `after` set to this; "
        "none: this was the last page. Only the pages read to the end make the list."))
    position: str | None = Field(None, description=(
        "Asked for (`since`, `with_position`): where this read stands, to pass as `since` next time (the first "
        "page's; every revocation this read may have missed was written at or after it)."))
    keys: str | None = Field(None, max_length=64, description=(
        "Asked for (`with_keys`): a fingerprint of the signing keys auth.keys.get would answer now (taken with "
        "`position`): a verifier reads the keys again when it differs from the last one, so a key cut in the "
        "database reaches it at its next poll. Left out when not asked (an older verifier refuses unknown fields)."))

    _omit_unset = omit_when_unset("keys")


# --- users -------------------------------------------------------------------------------------------

USER_ID_CHARS = 64
"""The longest user id a command names a user by (a UUID: 36 characters as users/query shows it). auth's 400 for a
value that is no UUID repeats at most its first 40 characters (services/auth/handlers.py `_uuid`)."""

UserId = Annotated[str, Field(max_length=USER_ID_CHARS)]


class QueryUsers(Command):
    """All visible users, those with the given ids, or the members of a workspace, oldest first (created_at, then id);
    all, or a page (`limit`, then `cursor`)."""

    user_ids: list[UserId] | None = Field(None, max_length=MAX_PAGE, description=(
        "Only these users (ids, users/query's keys; at most 1000 of them, each at most 64 characters)."))
    workspace_id: int | None = None
    limit: int | None = limit_field("users")
    cursor: str | None = key_cursor_field("users/query")


class UserRecord(Message):
    """A user as the seed shows it (Keycloak's representation)."""

    id: str
    username: str
    email: str | None = None
    emailVerified: bool = False
    enabled: bool
    firstName: str | None = None
    lastName: str | None = None
    createdTimestamp: int
    notBefore: int = 0
    requiredActions: list[str] = Field(default_factory=list)
    disableableCredentialTypes: list[str] = Field(default_factory=list)
    access: dict[str, bool]

    # Keycloak (seed 001's admin row) leaves out an attribute a user does not have, rather than a null
    _without_absent_names = omit_when_unset("email", "firstName", "lastName")


class Users(Message, NextCursor):
    """Users keyed by id (in the list's order), and `next_cursor` when a page is followed by more."""

    users: dict[str, UserRecord]


class InviteUser(Command):
    """Create a user; without a password a temporary one is generated and returned once."""

    email: str = name_field("The new user's email, also their user name (at most 254 characters).")
    password: str | None = optional_secret_field("The new user's password, 8 to 4096 characters; none: a temporary "
                                                 "one is generated.")


class UserInvited(Message):
    """The new user's id, and the temporary password when none was given."""

    user_id: str
    temporary_password: str | None = None




def optional_user_id_field() -> Any:
    """users/deactivate's and users/activate's `user_id`, the other way to name the user than seed 001's `email`."""
    return Field(None, max_length=USER_ID_CHARS, description=(
        "Or the user's id (users/query's key) instead of email: for a user whose email no command takes (invited "
        "before emails were bounded to 254 characters). One of the two."))


class DeactivateUser(Command):
    """Stop a user from logging in; their tokens stop working within a minute. The user by email (seed 001) or
    user_id."""

    email: str | None = optional_name_field("The user's email (at most 254 characters), or give user_id.")
    user_id: str | None = optional_user_id_field()


class ActivateUser(Command):
    """Let a deactivated user log in again. The user by email (seed 001) or user_id."""

    email: str | None = optional_name_field("The user's email (at most 254 characters), or give user_id.")
    user_id: str | None = optional_user_id_field()


class UpdatePassword(Command):
    """Set your own password (clears a temporary password), or, as an administrator, another user's (by email or
    user_id; it becomes temporary). Every token the user holds stops working."""

    password: str = secret_field("The new password (8 to 4096 characters).")
    current_password: str | None = optional_secret_field("Your current password (required for your own; at most "
                                                         "4096 characters).")
    email: str | None = optional_name_field("The user whose password to set: another user's (administrators; it "
                                            "becomes temporary), or your own (with current_password). None: your "
                                            "own. At most 254 characters.")
    user_id: str | None = Field(None, max_length=USER_ID_CHARS, description=(
        "Or the user's id (users/query's key) instead of email, for a user whose email no command takes (invited "
        "before emails were bounded to 254 characters). Not with email."))


class Empty(Message):
    """An empty reply, `{}` as the seed shows."""


# --- workspaces --------------------------------------------------------------------------------------


class ListWorkspaces(Command):
    """Workspaces of the caller, or of `user_id` (admins, or the user themself), oldest first; all of them, or a page
    (`limit`, then `cursor`)."""

    user_id: str | None = Field(None, max_length=USER_ID_CHARS, description="Whose workspaces (a user id, at most 64 "
                                "characters); none: the caller's.")
    limit: int | None = limit_field("workspaces")
    cursor: str | None = cursor_field("workspaces/list")


class WorkspaceRecord(Message):
    """A workspace with the ids of its models and pipelines."""

    id: int
    name: str
    created_at: str
    created_by: str
    archived: bool
    models: list[int]
    pipelines: list[int]


class Workspaces(Message, NextCursor):
    workspaces: list[WorkspaceRecord]


class CreateWorkspace(Command):
    """Create a workspace owned by the caller."""

    workspace_name: str


class WorkspaceCreated(Message):
    workspace_id: int


class AddWorkspaceUser(Command):
    """Add an existing user (by email) to a workspace as a collaborator."""

    email: str = name_field()
    workspace_id: int


class ListWorkspaceUsers(Command):
    """workspaces/list_users: a workspace's members, in the order they were added; all, or a page (`limit`, then
    `cursor`)."""

    workspace_id: int
    limit: int | None = limit_field("members")
    cursor: str | None = key_cursor_field("workspaces/list_users")


class WorkspaceMember(Message):
    user_id: str
    user_type: Literal["OWNER", "COLLABORATOR"]


class WorkspaceUsers(Message, NextCursor):
    users: list[WorkspaceMember]


class RemoveWorkspaceUser(Command):
    """Remove a user (by user_id or email) from a workspace."""

    workspace_id: int
    user_id: str | None = Field(None, max_length=USER_ID_CHARS, description="The user's id (at most 64 characters), "
                                "or give email.")
    email: str | None = optional_name_field()


class AffectedRows(Message):
    affected_rows: int


class CheckMembership(Command):
    """Is the caller a member of this workspace? (for services that own workspace resources)"""

    workspace_id: int


class Membership(Message):
    workspace_id: int
    user_type: Literal["OWNER", "COLLABORATOR"]


# --- inference clients -------------------------------------------------------------------------------


class CreateInferenceClient(Command):
    """A new inference client of a workspace (owners): its client_credentials tokens infer on that workspace's
    deployments only."""

    workspace_id: int
    name: str = Field(description="A label unique among the workspace's live inference clients.")


class InferenceClientCreated(Message):
    """The new client's id and secret; the secret is shown this once and never stored in the clear."""

    client_id: str
    client_secret: str
    workspace_id: int
    name: str


class ListInferenceClients(Command):
    """The live inference clients of a workspace (members), oldest first (created_at, then client_id); all, or a page
    (`limit`, then `cursor`)."""

    workspace_id: int
    limit: int | None = limit_field("inference clients")
    cursor: str | None = key_cursor_field("workspaces/list_inference_clients")


class InferenceClientRecord(Message):
    """An inference client, without its secret."""

    client_id: str
    name: str
    workspace_id: int
    created_at: str
    created_by: str | None


class InferenceClients(Message, NextCursor):
    clients: list[InferenceClientRecord]


class RevokeInferenceClient(Command):
    """Revoke an inference client (owners): no new tokens, and its live tokens stop working."""

    workspace_id: int
    client_id: str = Field(max_length=CLIENT_ID_CHARS, description="The inference client's id (at most 128 "
                           "characters).")


# --- features ----------------------------------------------------------------------------------------


class ListFeatures(Command):
    """The instance's enabled features."""


class Features(Message):
    features: dict[str, str]
    name: str
    is_auth_enabled: bool


# --- events ------------------------------------------------------------------------------------------


class SigningKeyWasRotated(Event):
    """A new signing key is active: verifiers refetch the JWKS."""

    kid: str


class UserCreated(Event):
    user_id: uuid.UUID
    email: str | None


class UserDeactivated(Event):
    user_id: uuid.UUID
    revoked_before: float = Field(description="Tokens issued at or before this moment (epoch s) are refused.")


class TokensRevoked(Event):
    """Tokens of a subject (a user whose password changed, a revoked inference client) issued at or before a
    moment no longer count, or those of one session of it (a reused authorization code's); verifiers apply it at
    once."""

    subject: str
    revoked_before: float = Field(description="Tokens issued at or before this moment (epoch s) are refused.")
    session: str | None = Field(None, description="When set, only this session of the subject (its tokens' "
                                "session_state) is revoked, and every token of it, whenever issued (a reused "
                                "authorization code's); revoked_before is then the moment it was revoked.")
    expires: float | None = Field(None, description="With `session`: when the last token of the session expires "
                                  "(epoch s), when that may be later than access_token_ttl after the revocation (a "
                                  "task run's session, revoked at the run's end): kept until then.")


class UserActivated(Event):
    user_id: uuid.UUID


class WorkspaceWasCreated(Event):
    workspace_id: int
    name: str
    created_by: uuid.UUID


class WorkspaceMembershipChanged(Event):
    workspace_id: int
    user_id: uuid.UUID
    user_type: Literal["OWNER", "COLLABORATOR"] | None = Field(description="None when the user was removed.")
