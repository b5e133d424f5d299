"""The IAM and STS operations kvslite serves: users, access keys, inline user policies and
GetCallerIdentity. Each takes the form's typed parameters and the caller's principal and
returns the output members of botocore's model (edge/query_protocol.py writes the XML).

Who may call which is decided before a handler runs (edge/authorization.py: `iam:<Action>`
on the user named, from the caller's policies); GetCallerIdentity, as in AWS, needs no
permission.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote


from kvslite.server.iam.principal import Principal, root_arn
from kvslite.server.iam.users import AccessKey, IamUser, Users, validation_error

IamHandler = Callable[[dict[str, Any], Principal | None], dict | None]

DEFAULT_MAX_ITEMS = 100


class IamApi:
    def __init__(self, users: Users, *, account_id: str):
        self.users = users
        self.account_id = account_id

    def operations(self) -> dict[str, IamHandler]:
        iam: dict[str, IamHandler] = {
            "CreateUser": self.create_user, "GetUser": self.get_user,
            "ListUsers": self.list_users, "DeleteUser": self.delete_user,
            "CreateAccessKey": self.create_access_key,
            "ListAccessKeys": self.list_access_keys,
            "UpdateAccessKey": self.update_access_key,
            "DeleteAccessKey": self.delete_access_key,
            "PutUserPolicy": self.put_user_policy, "GetUserPolicy": self.get_user_policy,
            "ListUserPolicies": self.list_user_policies,
            "DeleteUserPolicy": self.delete_user_policy,
        }
        return iam

    def sts_operations(self) -> dict[str, IamHandler]:
        return {"GetCallerIdentity": self.get_caller_identity}

    # -- users ------------------------------------------------------------------------

    def create_user(self, params: dict, caller: Principal | None) -> dict:
        return {"User": self._user(self.users.create_user(params.get("UserName"),
                                                          params.get("Path")))}

    def get_user(self, params: dict, caller: Principal | None) -> dict:
        if "UserName" not in params and (caller is None or caller.kind == "admin"):
            return {"User": {"Path": "/", "UserId": self.account_id, "CreateDate": 0,
                             "Arn": root_arn(self.account_id)}}
        return {"User": self._user(self.users.get_user(_user_name(params, caller)))}

    def list_users(self, params: dict, caller: Principal | None) -> dict:
        limit = _max_items(params)
        found = self.users.list_users(path_prefix=params.get("PathPrefix", "/"),
                                      after=params.get("Marker", ""), limit=limit + 1)
        page = found[:limit]
        truncated = len(found) > limit
        return {"Users": [self._user(user) for user in page], "IsTruncated": truncated,
                "Marker": page[-1].name if truncated else None}

    def delete_user(self, params: dict, caller: Principal | None) -> None:
        self.users.delete_user(params.get("UserName"))

    # -- access keys ------------------------------------------------------------------

    def create_access_key(self, params: dict, caller: Principal | None) -> dict:
        key, secret = self.users.create_access_key(_user_name(params, caller))
        return {"AccessKey": {**_key(key), "SecretAccessKey": secret}}

    def list_access_keys(self, params: dict, caller: Principal | None) -> dict:
        keys = self.users.list_access_keys(_user_name(params, caller))
        return {"AccessKeyMetadata": [_key(key) for key in keys], "IsTruncated": False}

    def update_access_key(self, params: dict, caller: Principal | None) -> None:
        self.users.update_access_key(_user_name(params, caller), params.get("AccessKeyId"),
                                     params.get("Status"))

    def delete_access_key(self, params: dict, caller: Principal | None) -> None:
        self.users.delete_access_key(_user_name(params, caller), params.get("AccessKeyId"))

    # -- inline policies --------------------------------------------------------------

    def put_user_policy(self, params: dict, caller: Principal | None) -> None:
        self.users.put_user_policy(params.get("UserName"), params.get("PolicyName"),
                                   params.get("PolicyDocument"))

    def get_user_policy(self, params: dict, caller: Principal | None) -> dict:
        name, policy = params.get("UserName"), params.get("PolicyName")
        document = self.users.get_user_policy(name, policy)
        # AWS returns the document URL-encoded (RFC 3986), as it does every policy
        return {"UserName": name, "PolicyName": policy,
                "PolicyDocument": quote(document, safe="-_.~")}

    def list_user_policies(self, params: dict, caller: Principal | None) -> dict:
        return {"PolicyNames": self.users.list_user_policies(params.get("UserName")),
                "IsTruncated": False}

    def delete_user_policy(self, params: dict, caller: Principal | None) -> None:
        self.users.delete_user_policy(params.get("UserName"), params.get("PolicyName"))

    # -- STS --------------------------------------------------------------------------

    def get_caller_identity(self, params: dict, caller: Principal | None) -> dict:
        if caller is None or caller.kind == "admin":  # anonymous mode acts as the admin
            return {"UserId": self.account_id, "Account": self.account_id,
                    "Arn": root_arn(self.account_id)}
        return {"UserId": caller.variables.get("aws:userid", caller.access_key_id),
                "Account": self.account_id, "Arn": caller.arn}

    def _user(self, user: IamUser) -> dict:
        return {"Path": user.path, "UserName": user.name, "UserId": user.user_id,
                "Arn": self.users.arn(user), "CreateDate": user.create_date}


def _user_name(params: dict, caller: Principal | None) -> str | None:
    """The UserName given, else the calling user's own (as AWS does)."""
    if "UserName" in params:
        return params["UserName"]
    return caller.name if caller is not None and caller.kind == "user" else None


def _max_items(params: dict) -> int:
    limit = params.get("MaxItems", DEFAULT_MAX_ITEMS)
    if not 1 <= limit <= 1000:
        raise validation_error(str(limit), "maxItems", "Member must have value between 1 "
                               "and 1000")
    return limit


def _key(key: AccessKey) -> dict:
    return {"UserName": key.user_name, "AccessKeyId": key.access_key_id,
            "Status": key.status, "CreateDate": key.create_date}
