"""IAM users, their access keys and inline policies, for both SQL stores.

The limits are checked and applied in one transaction that first locks the user's row
(SQLite's write transactions run one at a time anyway): two CreateAccessKey calls racing
for a user's last key slot cannot both get it, and a user is deleted only while it has
no keys and no policies. A key's `secret` is stored as given: iam/credentials.py
encrypts it before it gets here.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from kvslite.server.store.database import SqlDatabase
from kvslite.server.store.metadata import NameTaken
from kvslite.server.store.schema import iam_access_keys, iam_user_policies, iam_users

u, k, p = iam_users.c, iam_access_keys.c, iam_user_policies.c


@dataclass(frozen=True)
class IamUser:
    name: str
    user_id: str
    path: str
    create_date: float


@dataclass(frozen=True)
class AccessKey:
    access_key_id: str
    user_name: str
    secret: bytes  # encrypted
    status: str  # Active or Inactive
    create_date: float


class NoSuchUser(Exception):
    """The user named does not exist."""


class LimitReached(Exception):
    """A count limit (users, or one user's keys) would be exceeded."""


class UserInUse(Exception):
    """The user still has access keys or policies (AWS's DeleteConflict)."""


def _user_of(row: sa.Row) -> IamUser:
    return IamUser(name=row.name, user_id=row.user_id, path=row.path,
                   create_date=row.create_date)


def _key_of(row: sa.Row) -> AccessKey:
    return AccessKey(access_key_id=row.access_key_id, user_name=row.user_name,
                     secret=bytes(row.secret), status=row.status, create_date=row.create_date)


_LOCK_USER = (sa.select(u.name).where(u.name == sa.bindparam("user_name"))
              .with_for_update())
_KEY_BY_ID = sa.select(iam_access_keys).where(k.access_key_id == sa.bindparam("key_id"))


class SqlIam(SqlDatabase):
    # -- users ------------------------------------------------------------------------

    def create_user(self, user: IamUser, max_users: int) -> None:
        """Raises NameTaken or LimitReached."""
        try:
            with self._write() as conn:
                count = conn.execute(sa.select(sa.func.count()).select_from(iam_users))
                if count.scalar_one() >= max_users:
                    raise LimitReached(f"{max_users} users")
                conn.execute(sa.insert(iam_users).values(
                    name=user.name, user_id=user.user_id, path=user.path,
                    create_date=user.create_date))
        except sa.exc.IntegrityError as e:
            raise NameTaken(user.name) from e

    def get_user(self, name: str) -> IamUser | None:
        with self._read() as conn:
            row = conn.execute(sa.select(iam_users).where(u.name == name)).first()
        return None if row is None else _user_of(row)

    def list_users(self, *, after: str, limit: int) -> list[IamUser]:
        with self._read() as conn:
            rows = conn.execute(sa.select(iam_users).where(u.name > after)
                                .order_by(u.name).limit(limit))
            return [_user_of(row) for row in rows]

    def delete_user(self, name: str) -> None:
        """Raises NoSuchUser, or UserInUse while it has keys or policies."""
        with self._write() as conn:
            self._lock_user(conn, name)
            for table in (iam_access_keys, iam_user_policies):
                if conn.execute(sa.select(sa.func.count()).select_from(table)
                                .where(table.c.user_name == name)).scalar_one():
                    raise UserInUse(name)
            conn.execute(sa.delete(iam_users).where(u.name == name))

    def _lock_user(self, conn: sa.Connection, name: str) -> None:
        if conn.execute(_LOCK_USER, {"user_name": name}).first() is None:
            raise NoSuchUser(name)

    # -- access keys ------------------------------------------------------------------

    def create_access_key(self, key: AccessKey, max_keys: int) -> None:
        """Raises NoSuchUser, or LimitReached when the user has `max_keys` already."""
        with self._write() as conn:
            self._lock_user(conn, key.user_name)
            count = conn.execute(sa.select(sa.func.count()).select_from(iam_access_keys)
                                 .where(k.user_name == key.user_name)).scalar_one()
            if count >= max_keys:
                raise LimitReached(f"{max_keys} access keys")
            conn.execute(sa.insert(iam_access_keys).values(
                access_key_id=key.access_key_id, user_name=key.user_name, secret=key.secret,
                status=key.status, create_date=key.create_date))

    def get_access_key(self, access_key_id: str) -> AccessKey | None:
        with self._read() as conn:
            row = conn.execute(_KEY_BY_ID, {"key_id": access_key_id}).first()
        return None if row is None else _key_of(row)

    def list_access_keys(self, user_name: str) -> list[AccessKey]:
        with self._read() as conn:
            rows = conn.execute(sa.select(iam_access_keys).where(k.user_name == user_name)
                                .order_by(k.create_date, k.access_key_id))
            return [_key_of(row) for row in rows]

    def all_access_keys(self) -> list[AccessKey]:
        """Every user's keys: what moving the secrets to a new server key goes through."""
        with self._read() as conn:
            return [_key_of(row) for row in conn.execute(
                sa.select(iam_access_keys).order_by(k.access_key_id))]

    def set_access_key_secret(self, access_key_id: str, secret: bytes) -> None:
        """The key's secret, encrypted anew (iam/server_key.py)."""
        with self._write() as conn:
            conn.execute(sa.update(iam_access_keys).where(k.access_key_id == access_key_id)
                         .values(secret=secret))

    def set_access_key_status(self, user_name: str, access_key_id: str, status: str) -> bool:
        """False where the user has no such key."""
        with self._write() as conn:
            return conn.execute(sa.update(iam_access_keys).where(
                k.access_key_id == access_key_id, k.user_name == user_name
            ).values(status=status)).rowcount == 1

    def delete_access_key(self, user_name: str, access_key_id: str) -> bool:
        with self._write() as conn:
            return conn.execute(sa.delete(iam_access_keys).where(
                k.access_key_id == access_key_id, k.user_name == user_name)).rowcount == 1

    # -- inline policies --------------------------------------------------------------

    def put_user_policy(self, user_name: str, policy_name: str, document: str) -> None:
        """Adds or replaces the policy; raises NoSuchUser."""
        with self._write() as conn:
            self._lock_user(conn, user_name)
            conn.execute(self.insert(iam_user_policies).values(
                user_name=user_name, policy_name=policy_name, document=document
            ).on_conflict_do_update(index_elements=("user_name", "policy_name"),
                                    set_={"document": document}))

    def user_policies(self, user_name: str) -> dict[str, str]:
        """The user's policies, name -> document, in name order."""
        with self._read() as conn:
            rows = conn.execute(sa.select(p.policy_name, p.document)
                                .where(p.user_name == user_name).order_by(p.policy_name))
            return {row.policy_name: row.document for row in rows}

    def delete_user_policy(self, user_name: str, policy_name: str) -> bool:
        with self._write() as conn:
            return conn.execute(sa.delete(iam_user_policies).where(
                p.user_name == user_name, p.policy_name == policy_name)).rowcount == 1
