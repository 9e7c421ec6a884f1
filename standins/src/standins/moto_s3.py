"""moto's S3 server in a child process, checking SigV4 against an IAM key made inside it.

    with moto_s3() as s3:                            # MotoS3(endpoint, region, bucket, access_key, secret_key)
        s3.endpoint                                  # "http://127.0.0.1:PORT"
        body, content_type, metadata = s3.read("k")  # a GET signed with the real key
        s3.client(secret_key="wrong").put_object(...)   # -> 403 SignatureDoesNotMatch

moto (with boto3) is a dependency of the stand-ins' own distribution,
never of the product's. The child (`python -m standins.moto_s3`) runs moto.server.ThreadedMotoServer on
a free port of 127.0.0.1 and prints it. It starts with
INITIAL_NO_AUTH_ACTION_COUNT=3: moto lets exactly three actions through
unchecked, which make the IAM user, its s3:* policy and its access key;
every later request must be signed with that key. The child stops when its
stdin closes, so a killed test run leaves no server behind.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.config

USER = "sidecar"
NO_AUTH_ACTIONS = 3  # CreateUser, PutUserPolicy, CreateAccessKey
ALLOW_S3 = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


@dataclass(frozen=True)
class MotoS3:
    endpoint: str
    region: str
    bucket: str
    access_key: str
    secret_key: str

    def client(self, *, access_key: str | None = None, secret_key: str | None = None) -> Any:
        """A boto3 S3 client on this server, path-style, no retries; the real key unless told otherwise."""
        return _client("s3", self.endpoint, self.region, access_key or self.access_key,
                       secret_key or self.secret_key)

    def read(self, key: str) -> tuple[bytes, str, dict[str, str]]:
        """An object's body, content type and user metadata, by a signed GET."""
        answer = self.client().get_object(Bucket=self.bucket, Key=key)
        return answer["Body"].read(), answer["ContentType"], answer["Metadata"]


def _client(service: str, endpoint: str, region: str, access_key: str, secret_key: str) -> Any:
    config = botocore.config.Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1})
    return boto3.client(service, endpoint_url=endpoint, region_name=region, aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key, config=config)


@contextmanager
def moto_s3(*, bucket: str = "sidecar-test", region: str = "us-east-1", port: int = 0) -> Iterator[MotoS3]:
    """Start moto with signature checks on, make the IAM key and the bucket; stop on exit."""
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(NO_AUTH_ACTIONS)}
    proc = subprocess.Popen([sys.executable, "-m", "standins.moto_s3", str(port)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"moto server exited with {proc.wait()} before it was ready")
        endpoint = f"http://127.0.0.1:{json.loads(line)['port']}"
        # The unchecked actions: any key signs them.
        iam = _client("iam", endpoint, region, "AKIAUNCHECKED0000000", "unchecked")
        iam.create_user(UserName=USER)
        iam.put_user_policy(UserName=USER, PolicyName="s3-all", PolicyDocument=json.dumps(ALLOW_S3))
        key = iam.create_access_key(UserName=USER)["AccessKey"]
        s3 = MotoS3(endpoint, region, bucket, key["AccessKeyId"], key["SecretAccessKey"])
        where = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        s3.client().create_bucket(Bucket=bucket, **where)
        yield s3
    finally:
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _serve() -> None:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0  # moto_s3(port=...) passes it
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    print(json.dumps({"port": server.get_host_and_port()[1]}), flush=True)
    sys.stdin.read()  # until the parent closes our stdin (or dies)
    server.stop()


if __name__ == "__main__":
    _serve()
