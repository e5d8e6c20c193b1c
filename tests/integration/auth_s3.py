"""An S3 server that checks who asks: moto in a process of its own, with IAM authentication on.

moto serves S3 without checking signatures unless told otherwise; once its authentication
is switched on (``POST /moto-api/reset-auth``), every request must be signed with an IAM
user's key and is checked against that user's policies, as AWS checks them: a wrong
secret is ``SignatureDoesNotMatch``, an unknown key ``InvalidAccessKeyId``, a policy that
does not allow the action ``AccessDenied``. (moto does not enforce bucket policies, so a
"policy changed" is the user's IAM policy changed.) The switch is global to a moto
process, hence a process of its own: the other tests' S3 server stays open.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import boto3

from streamer.dev.stack import free_port

_ALLOW_ALL = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}
_ALLOW_S3 = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
}
_DENY_S3 = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Deny", "Action": "s3:*", "Resource": "*"}],
}


class AuthS3:
    """``start()`` it; ``worker`` holds the key a job runs with, ``admin`` one that may do anything."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "moto-auth.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.worker: dict[str, str] = {}
        self.nobody: dict[str, str] = {}
        self.admin: dict[str, str] = {}

    def start(self) -> AuthS3:
        """The server, its users and authentication on; stopped again if any of that fails."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> AuthS3:
        with self.log.open("wb") as out:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    raise RuntimeError(
                        f"moto did not start: {self.log.read_text()[-2000:]}"
                    ) from None
                time.sleep(0.05)
        iam = self._client("iam", {"key": "bootstrap", "secret": "bootstrap"})
        self.admin = self._user(iam, "admin", _ALLOW_ALL)
        self.worker = self._user(iam, "worker", _ALLOW_S3)
        self.nobody = self._user(iam, "nobody", None)  # no policy: every S3 action denied
        switch = urllib.request.Request(
            f"{self.url}/moto-api/reset-auth",
            data=b"0",  # requests counted before authentication is checked: none
            headers={"Content-Type": "text/plain"},  # a form body would be parsed away
            method="POST",
        )
        urllib.request.urlopen(switch, timeout=10).close()
        return self

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def _client(self, service: str, who: dict[str, str]) -> Any:
        return boto3.client(  # type: ignore[call-overload]
            service,
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=who["key"],
            aws_secret_access_key=who["secret"],
        )

    @staticmethod
    def _user(iam: Any, name: str, policy: dict[str, Any] | None) -> dict[str, str]:
        iam.create_user(UserName=name)
        if policy is not None:
            iam.put_user_policy(UserName=name, PolicyName="base", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return {"key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}

    def s3(self) -> Any:
        """An S3 client with the admin's key, for the tests' own set-up."""
        return self._client("s3", self.admin)

    def new_bucket(self) -> str:
        name = f"auth-{uuid.uuid4().hex[:10]}"
        self.s3().create_bucket(Bucket=name)
        return name

    def delete_bucket(self, bucket: str) -> None:
        """Gone, with everything in it (S3 deletes only an empty bucket)."""
        s3 = self.s3()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])
        s3.delete_bucket(Bucket=bucket)

    def deny_worker(self) -> None:
        """The worker's policy changed: S3 denied (an explicit deny wins over the allow)."""
        self._client("iam", self.admin).put_user_policy(
            UserName="worker", PolicyName="deny", PolicyDocument=json.dumps(_DENY_S3)
        )

    def allow_worker(self) -> None:
        self._client("iam", self.admin).delete_user_policy(UserName="worker", PolicyName="deny")

    def settings(self, who: str = "worker", **overrides: str) -> dict[str, Any]:
        """Flat settings that point a job at this server with one user's key."""
        key = {"worker": self.worker, "nobody": self.nobody, "admin": self.admin}[who]
        return {
            "s3_endpoint_url": self.url,
            "s3_access_key_id": key["key"],
            "s3_secret_access_key": key["secret"],
            **overrides,
        }
