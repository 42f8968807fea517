"""A stand-in for MinIO's ``mc``, for running docker-compose.yml's minio-init script natively.

It does what the script asks of mc, through the minio SDK, against a real MinIO, and answers
as mc does where the script reads the answer. Only the commands the script uses exist:

    mc alias set ALIAS URL ACCESS_KEY SECRET_KEY
    mc mb --ignore-existing ALIAS/BUCKET
    mc admin user add ALIAS ACCESS_KEY SECRET_KEY
    mc admin user info ALIAS ACCESS_KEY          (prints PolicyName: ...)
    mc admin policy attach ALIAS POLICY --user ACCESS_KEY
                                                 (fails, like mc, when already attached)

Aliases are kept in the JSON file ``$MC_SHIM_STATE``; every call is appended, one line of JSON,
to ``$MC_SHIM_LOG``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

from minio import Minio
from minio.credentials import StaticProvider
from minio.minioadmin import MinioAdmin


def _aliases() -> dict[str, dict[str, str]]:
    path = Path(os.environ["MC_SHIM_STATE"])
    loaded: dict[str, dict[str, str]] = json.loads(path.read_text()) if path.exists() else {}
    return loaded


def _clients(alias: str) -> tuple[Minio, MinioAdmin]:
    entry = _aliases()[alias]
    url = urlparse(entry["url"])
    secure = url.scheme == "https"
    client = Minio(url.netloc, access_key=entry["access_key"], secret_key=entry["secret_key"], secure=secure)
    admin = MinioAdmin(
        endpoint=url.netloc, credentials=StaticProvider(entry["access_key"], entry["secret_key"]), secure=secure
    )
    return client, admin


def _policies(admin: MinioAdmin, user: str) -> list[str]:
    info = json.loads(admin.user_info(user))
    return [p for p in str(info.get("policyName") or "").split(",") if p]


def main(argv: list[str]) -> int:
    with open(os.environ["MC_SHIM_LOG"], "a") as log:
        log.write(json.dumps(argv) + "\n")
    match argv:
        case ["alias", "set", alias, url, access_key, secret_key]:
            aliases = _aliases()
            aliases[alias] = {"url": url, "access_key": access_key, "secret_key": secret_key}
            Path(os.environ["MC_SHIM_STATE"]).write_text(json.dumps(aliases))
            _clients(alias)[0].list_buckets()  # mc checks the credentials too
            print(f"Added `{alias}` successfully.")
        case ["mb", "--ignore-existing", target]:
            alias, _, bucket = target.partition("/")
            client = _clients(alias)[0]
            if not client.bucket_exists(bucket):
                client.make_bucket(bucket)
            print(f"Bucket created successfully `{target}`.")
        case ["admin", "user", "add", alias, access_key, secret_key]:
            _clients(alias)[1].user_add(access_key, secret_key)
            print(f"Added user `{access_key}` successfully.")
        case ["admin", "user", "info", alias, access_key]:
            policies = _policies(_clients(alias)[1], access_key)
            print(f"AccessKey: {access_key}\nStatus: enabled\nPolicyName: {','.join(policies)}")
        case ["admin", "policy", "attach", alias, policy, "--user", user]:
            admin = _clients(alias)[1]
            if policy in _policies(admin, user):
                print("mc: <ERROR> Unable to attach the policy: the specified policy change is already in effect.", file=sys.stderr)
                return 1
            admin.attach_policy([policy], user=user)
            print(f"Attached Policies: [{policy}]\nTo User: {user}")
        case _:
            print(f"mc shim: unsupported command {argv}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
