"""From an access key id to the secret that signs with it and the principal it belongs to.

The administrator's key (--access-key-id/--secret-access-key) is always there and may do
everything. Users' keys live in the metadata store, their secrets encrypted (Fernet:
AES-128-CBC with an HMAC) under a key derived from the server key file, which every node
of a cluster shares and the store does not hold (iam/server_key.py). Each request
signed with a user's key reads the key and the user's policies afresh, so deactivating or
deleting a key, or changing a policy, acts on the next request.
"""

from __future__ import annotations

from cryptography.fernet import InvalidToken, MultiFernet

from kvslite.server.iam.principal import Principal, root_arn, user_arn
from kvslite.server.iam.tokens import SessionCredentials
from kvslite.server.iam.users import ACTIVE


class Credentials:
    def __init__(self, store, cipher: MultiFernet, *, account_id: str,
                 admin_key_id: str | None, admin_secret: str | None,
                 sessions: SessionCredentials | None = None):
        self.store = store
        self.sessions = sessions  # temporary credentials kvslite issued (iam/tokens.py)
        self.cipher = cipher
        self.account_id = account_id
        self.admin = None
        if admin_key_id and admin_secret:
            self.admin = (admin_secret, Principal(
                arn=root_arn(account_id), name="root", kind="admin",
                access_key_id=admin_key_id))

    def reads_store(self, access_key_id: str, session_token: str | None) -> bool:
        """Whether `lookup` of this key reads the store: a user's key does; the
        administrator's and a session token's (which carries its principal) do not."""
        admin = self.admin is not None and access_key_id == self.admin[1].access_key_id
        return session_token is None and not admin

    def lookup(self, access_key_id: str, session_token: str | None
               ) -> tuple[str, Principal] | None:
        """The secret to verify the signature with and who signed, or None for a key
        that is unknown, inactive, or not meant for a session token."""
        if session_token is not None:  # the token holds the secret and the principal
            return self.sessions.lookup(access_key_id, session_token) if self.sessions else None
        if self.admin is not None and access_key_id == self.admin[1].access_key_id:
            return self.admin
        key = self.store.get_access_key(access_key_id)
        if key is None or key.status != ACTIVE:
            return None
        user = self.store.get_user(key.user_name)
        if user is None:
            return None
        try:
            secret = self.cipher.decrypt(key.secret).decode()
        except InvalidToken:  # encrypted under another server key: unusable
            return None
        policies = tuple(self.store.user_policies(user.name).values())
        return secret, Principal(
            arn=user_arn(self.account_id, user.path, user.name),
            name=user.name, kind="user", policies=policies,
            variables={"aws:username": user.name, "aws:userid": user.user_id,
                       "aws:principaltype": "User"},
            access_key_id=access_key_id)
