"""IAM users, access keys and inline policies: AWS's rules for them, above the store.

Names, limits and error codes are AWS's: user names `[\\w+=,.@-]{1,64}`, 5000 users, 2
access keys a user, inline policies of at most 2048 characters (policy_shape.py). A user
with keys or policies cannot be deleted (DeleteConflict). Secrets are encrypted before
they are stored (credentials.py keeps the key).
"""

from __future__ import annotations

import base64
import secrets
import time
from typing import Protocol

import regex

from kvslite.server.api_errors import (
    DELETE_CONFLICT,
    ENTITY_ALREADY_EXISTS,
    LIMIT_EXCEEDED,
    NO_SUCH_ENTITY,
    VALIDATION_ERROR,
    ApiError,
)
from kvslite.server.iam.policy_shape import check_user_policy
from kvslite.server.iam.principal import user_arn
from kvslite.server.store.metadata import NameTaken
from kvslite.server.store.sql_iam import (
    AccessKey,
    IamUser,
    LimitReached,
    NoSuchUser,
    UserInUse,
)

__all__ = ["AccessKey", "IamUser", "Users"]

MAX_USERS = 5000
MAX_KEYS_PER_USER = 2
ACTIVE, INACTIVE = "Active", "Inactive"
USER_NAME = regex.compile(r"[\w+=,.@-]{1,64}")
POLICY_NAME = regex.compile(r"[\w+=,.@-]{1,128}")
PATH = regex.compile(r"/|/[\x21-\x7e]{1,510}/")
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"  # AWS's key and user ids are base32 letters


class Cipher(Protocol):
    def encrypt(self, data: bytes) -> bytes: ...


def _id(prefix: str, length: int) -> str:
    return prefix + "".join(secrets.choice(_BASE32) for _ in range(length))


def new_secret_access_key() -> str:
    return base64.b64encode(secrets.token_bytes(30)).decode()  # 40 characters, as AWS's


def validation_error(value: str | None, member: str, constraint: str) -> ApiError:
    shown = "null" if value is None else f"'{value[:100]}'"
    return ApiError(VALIDATION_ERROR, f"1 validation error detected: Value {shown} at "
                    f"'{member}' failed to satisfy constraint: {constraint}", status=400)


def check_name(value: str | None, member: str, pattern: regex.Pattern) -> str:
    if value is None:
        raise validation_error(value, member, "Member must not be null")
    if not pattern.fullmatch(value):
        raise validation_error(value, member, "Member must satisfy regular expression "
                               f"pattern: {pattern.pattern}")
    return value


def no_such_user(name: str) -> ApiError:
    return ApiError(NO_SUCH_ENTITY, f"The user with name {name} cannot be found.", status=404)


class Users:
    """The IAM rules over a store with the SqlIam queries (store/sql_iam.py)."""

    def __init__(self, store, cipher: Cipher, *, account_id: str):
        self.store = store
        self.cipher = cipher
        self.account_id = account_id

    def path(self, name: str) -> str | None:
        """The path of the user `name`, None if there is no such user."""
        user = self.store.get_user(name)
        return None if user is None else user.path

    def arn(self, user: IamUser) -> str:
        return user_arn(self.account_id, user.path, user.name)

    # -- users ------------------------------------------------------------------------

    def create_user(self, name: str | None, path: str | None = None) -> IamUser:
        name = check_name(name, "userName", USER_NAME)
        path = "/" if path is None else path
        if not PATH.fullmatch(path):
            raise validation_error(path, "path", f"Member must satisfy regular expression "
                                   f"pattern: {PATH.pattern}")
        user = IamUser(name=name, user_id=_id("AIDA", 17), path=path,
                       create_date=time.time())
        try:
            self.store.create_user(user, MAX_USERS)
        except NameTaken:
            raise ApiError(ENTITY_ALREADY_EXISTS, f"User with name {name} already exists.",
                           status=409) from None
        except LimitReached:
            raise ApiError(LIMIT_EXCEEDED, f"Cannot exceed quota for UsersPerAccount: "
                           f"{MAX_USERS}", status=409) from None
        return user

    def get_user(self, name: str | None) -> IamUser:
        name = check_name(name, "userName", USER_NAME)
        user = self.store.get_user(name)
        if user is None:
            raise no_such_user(name)
        return user

    def list_users(self, *, path_prefix: str, after: str, limit: int) -> list[IamUser]:
        """Users by name after `after`; `limit` of them where each has the path prefix."""
        found: list[IamUser] = []
        while len(found) < limit:
            page = self.store.list_users(after=after, limit=limit)
            found += [user for user in page if user.path.startswith(path_prefix)]
            if len(page) < limit:
                break
            after = page[-1].name
        return found[:limit]

    def delete_user(self, name: str | None) -> None:
        name = check_name(name, "userName", USER_NAME)
        try:
            self.store.delete_user(name)
        except NoSuchUser:
            raise no_such_user(name) from None
        except UserInUse:
            what = "access keys" if self.store.list_access_keys(name) else "policies"
            raise ApiError(DELETE_CONFLICT, f"Cannot delete entity, must delete {what} "
                           f"first.", status=409) from None

    # -- access keys ------------------------------------------------------------------

    def create_access_key(self, user_name: str | None) -> tuple[AccessKey, str]:
        """The new key and its secret, in clear: the only time it is ever shown."""
        user_name = check_name(user_name, "userName", USER_NAME)
        secret = new_secret_access_key()
        key = AccessKey(access_key_id=_id("AKIA", 16), user_name=user_name,
                        secret=self.cipher.encrypt(secret.encode()), status=ACTIVE,
                        create_date=time.time())
        try:
            self.store.create_access_key(key, MAX_KEYS_PER_USER)
        except NoSuchUser:
            raise no_such_user(user_name) from None
        except LimitReached:
            raise ApiError(LIMIT_EXCEEDED, f"Cannot exceed quota for AccessKeysPerUser: "
                           f"{MAX_KEYS_PER_USER}", status=409) from None
        return key, secret

    def list_access_keys(self, user_name: str | None) -> list[AccessKey]:
        user = self.get_user(user_name)
        return self.store.list_access_keys(user.name)

    def update_access_key(self, user_name: str | None, access_key_id: str | None,
                          status: str | None) -> None:
        if status not in (ACTIVE, INACTIVE):
            raise validation_error(status, "status", "Member must satisfy enum value set: "
                                   f"[{ACTIVE}, {INACTIVE}]")
        user = self.get_user(user_name)
        if not self.store.set_access_key_status(user.name, access_key_id or "", status):
            raise _no_such_key(access_key_id)

    def delete_access_key(self, user_name: str | None, access_key_id: str | None) -> None:
        user = self.get_user(user_name)
        if not self.store.delete_access_key(user.name, access_key_id or ""):
            raise _no_such_key(access_key_id)

    # -- inline policies --------------------------------------------------------------

    def put_user_policy(self, user_name: str | None, policy_name: str | None,
                        document: str | None) -> None:
        user_name = check_name(user_name, "userName", USER_NAME)
        policy_name = check_name(policy_name, "policyName", POLICY_NAME)
        if document is None:
            raise validation_error(None, "policyDocument", "Member must not be null")
        check_user_policy(user_name, document)
        try:
            self.store.put_user_policy(user_name, policy_name, document)
        except NoSuchUser:
            raise no_such_user(user_name) from None

    def get_user_policy(self, user_name: str | None, policy_name: str | None) -> str:
        user = self.get_user(user_name)
        policy_name = check_name(policy_name, "policyName", POLICY_NAME)
        document = self.store.user_policies(user.name).get(policy_name)
        if document is None:
            raise _no_such_policy(policy_name)
        return document

    def list_user_policies(self, user_name: str | None) -> list[str]:
        user = self.get_user(user_name)
        return list(self.store.user_policies(user.name))

    def delete_user_policy(self, user_name: str | None, policy_name: str | None) -> None:
        user = self.get_user(user_name)
        policy_name = check_name(policy_name, "policyName", POLICY_NAME)
        if not self.store.delete_user_policy(user.name, policy_name):
            raise _no_such_policy(policy_name)


def _no_such_key(access_key_id: str | None) -> ApiError:
    return ApiError(NO_SUCH_ENTITY, f"The Access Key with id {access_key_id} cannot be "
                    f"found.", status=404)


def _no_such_policy(policy_name: str) -> ApiError:
    return ApiError(NO_SUCH_ENTITY, f"The user policy with name {policy_name} cannot be "
                    f"found.", status=404)
