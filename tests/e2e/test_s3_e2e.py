"""S3 end to end: client -> sidecar process -> fault proxy -> moto's S3 server,
which checks every SigV4 signature (planning and signing without network: test_s3.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
from botocore.credentials import Credentials
from prometheus_client.parser import text_string_to_metric_families

from client import Client
from sidecar.config import S3Config
from sidecar.connectors.base import Send, unpaced
from sidecar.connectors.s3 import ObjectPut, PutObject, S3Connector
from sidecar.journal.spool import Spool
from standins.moto_s3 import MotoS3, moto_s3
from standins.s3proxy import S3FaultProxy

from ..support import SidecarProcess, sidecar_config, wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3]:
    with moto_s3() as s3:
        yield s3


@pytest.fixture
def proxy(moto: MotoS3) -> Iterator[S3FaultProxy]:
    with S3FaultProxy(moto.endpoint) as p:
        yield p


def sidecar(tmp: Path, proxy: S3FaultProxy, moto: MotoS3, *, secret_key: str | None = None,
            credentials: bool = True) -> SidecarProcess:
    """A sidecar whose S3 lane goes through `proxy`, with AWS credentials only from our env."""
    cfg = sidecar_config(tmp, s3={"endpoint_url": proxy.url, "region": moto.region, "concurrency": 4},
                         metrics={"address": "127.0.0.1:0"})
    sc = SidecarProcess(tmp, config=cfg)
    # Nothing of the developer's AWS setup may leak in: no files, no profile, no instance role.
    for name in [n for n in sc.env if n.startswith("AWS_")]:
        del sc.env[name]
    sc.env.update(AWS_CONFIG_FILE=str(tmp / "no-aws-config"), AWS_SHARED_CREDENTIALS_FILE=str(tmp / "no-aws-creds"),
                  AWS_EC2_METADATA_DISABLED="true")
    if credentials:
        sc.env.update(AWS_ACCESS_KEY_ID=moto.access_key, AWS_SECRET_ACCESS_KEY=secret_key or moto.secret_key)
    return sc.start()


def drained(sc: SidecarProcess, client: Client) -> bool:
    """Every event of `client` reached the journal, and the journal holds none."""
    seen = sc.query("SELECT last_seq FROM clients WHERE client_id=?", client.client_id)
    return bool(seen) and seen[0][0] >= client.stats()["sent"] and sc.journal_count("events") == 0


def metric(sc: SidecarProcess, name: str, **labels: str) -> float:
    """One sample from the running sidecar's /metrics."""
    for family in text_string_to_metric_families(sc.get("/metrics")[1].decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def spooled(sc: SidecarProcess) -> list[str]:
    return sorted(os.listdir(Path(sc.config["journal"]["dir"]) / "blobs"))


def put(bucket: str, key: str, **more: Any) -> dict[str, Any]:
    return {"bucket": bucket, "key": key, "content_type": "application/octet-stream", **more}


def test_large_blob_arrives_byte_for_byte_and_its_spool_file_goes(short_tmp: Path, moto: MotoS3,
                                                                  proxy: S3FaultProxy) -> None:
    sc = sidecar(short_tmp, proxy, moto)
    data = os.urandom(6 * 1024 * 1024)
    key = "reports/2024/06/pnl ü+1.bin"
    with Client(sc.endpoint, strict=True) as client:
        client.emit("s3.put", put(moto.bucket, key, content_type="text/csv",
                                  metadata={"desk": "fx", "run-id": "42"}), blob=data)
        client.emit("s3.put", put(moto.bucket, "no-body"))  # no blob
        client.emit("s3.put", put("Not_A_Bucket", "k"), blob=b"x")
    wait_until(lambda: drained(sc, client), timeout=20, what="the 6 MiB put")
    assert moto.read(key) == (data, "text/csv", {"desk": "fx", "run-id": "42"})
    assert proxy.count("PUT") == 1 and proxy.refused == 0
    assert spooled(sc) == []
    assert sorted(sc.query("SELECT reason FROM rejects")) == [("bad_payload",), ("bad_payload",)]
    assert sc.journal_count("dead_letters") == 0
    assert sc.stop() == 0


def test_paused_without_credentials_then_only_the_last_put_goes_and_repeats_are_skipped(
        short_tmp: Path, moto: MotoS3, proxy: S3FaultProxy) -> None:
    key, path = "positions/latest.json", f"/{moto.bucket}/positions/latest.json"
    versions = [f'{{"version": {n}}}'.encode() * 1000 for n in range(5)]
    sc = sidecar(short_tmp, proxy, moto, credentials=False)
    assert "lane s3 is paused" in sc.log_text() and "AWS_ACCESS_KEY_ID" in sc.log_text()
    with Client(sc.endpoint, strict=True) as client:
        for body in versions:  # all wait together in the journal
            client.emit("s3.put", put(moto.bucket, key), blob=body)
    wait_until(lambda: sc.journal_count("events") == 5, timeout=10, what="5 puts journaled")
    assert sc.stop() == 0 and proxy.forwarded == 0

    sc.env.update(AWS_ACCESS_KEY_ID=moto.access_key, AWS_SECRET_ACCESS_KEY=moto.secret_key)
    sc.start()
    wait_until(lambda: sc.journal_count("events") == 0, timeout=20, what="the puts to settle")
    assert moto.read(key)[0] == versions[-1]
    assert proxy.count("PUT", path=path) == 1  # the superseded four never reached S3
    assert metric(sc, "sidecar_events_deduplicated_total", kind="s3.put", reason="superseded") == 4

    with Client(sc.endpoint, strict=True) as again:
        again.emit("s3.put", put(moto.bucket, key), blob=versions[-1])  # as delivered
    wait_until(lambda: drained(sc, again), timeout=10, what="the repeat to settle")
    assert proxy.count("PUT", path=path) == 1
    assert metric(sc, "sidecar_events_deduplicated_total", kind="s3.put", reason="identical") == 1

    with Client(sc.endpoint, strict=True) as changed:
        changed.emit("s3.put", put(moto.bucket, key, metadata={"note": "x"}), blob=versions[-1])
    wait_until(lambda: drained(sc, changed), timeout=10, what="the metadata change")
    assert proxy.count("PUT", path=path) == 2 and moto.read(key)[2] == {"note": "x"}
    assert spooled(sc) == [] and sc.journal_count("dead_letters") == 0
    assert sc.stop() == 0


def test_slow_down_backs_off_and_everything_still_arrives(short_tmp: Path, moto: MotoS3,
                                                          proxy: S3FaultProxy) -> None:
    proxy.slow_down(3)
    sc = sidecar(short_tmp, proxy, moto)
    bodies = {f"fills/{n}.bin": os.urandom(64 * 1024 + n) for n in range(8)}
    with Client(sc.endpoint, strict=True) as client:
        for key, body in bodies.items():
            client.emit("s3.put", put(moto.bucket, key), blob=body)
    wait_until(lambda: drained(sc, client), timeout=20, what="8 puts through 3 SlowDowns")
    assert proxy.refused == 3 and proxy.count("PUT", outcome="refused") == 3
    assert proxy.count("PUT") == 8
    for key, body in bodies.items():
        assert moto.read(key)[0] == body
    assert metric(sc, "sidecar_delivery_retries_total", lane="s3", reason="http_503") == 3
    assert sc.journal_count("dead_letters") == 0 and spooled(sc) == []
    assert sc.stop() == 0


def test_wrong_secret_is_refused_by_moto(moto: MotoS3) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as err:
        moto.client(secret_key="not-the-secret").put_object(Bucket=moto.bucket, Key="x", Body=b"x")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert err.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    moto.client().head_bucket(Bucket=moto.bucket)  # the real key passes


def test_wrong_credentials_pause_the_lane_until_the_credentials_file_is_fixed(
        short_tmp: Path, moto: MotoS3, proxy: S3FaultProxy) -> None:
    shared = short_tmp / "aws-credentials"

    def write_keys(secret: str) -> None:
        shared.write_text(f"[default]\naws_access_key_id = {moto.access_key}\naws_secret_access_key = {secret}\n")

    write_keys("not-the-secret")
    cfg = sidecar_config(short_tmp, s3={"endpoint_url": proxy.url, "region": moto.region, "concurrency": 4},
                         metrics={"address": "127.0.0.1:0"})
    sc = SidecarProcess(short_tmp, config=cfg)
    for name in [n for n in sc.env if n.startswith("AWS_")]:
        del sc.env[name]
    # As the systemd unit does: keys in a shared credentials file, which can be rewritten.
    sc.env.update(AWS_CONFIG_FILE=str(short_tmp / "no-aws-config"), AWS_SHARED_CREDENTIALS_FILE=str(shared),
                  AWS_EC2_METADATA_DISABLED="true")
    sc.start()
    with Client(sc.endpoint, strict=True) as client:
        client.emit("s3.put", put(moto.bucket, "denied/1"), blob=b"one")
        client.emit("s3.put", put(moto.bucket, "denied/2"), blob=b"two")
    wait_until(lambda: "paused: credentials refused by S3" in sc.log_text(), timeout=20, what="the lane to pause")
    assert sc.journal_count("events") == 2 and sc.journal_count("dead_letters") == 0
    assert len(spooled(sc)) == 2  # the bodies wait with their events
    assert {r.status for r in proxy.records} == {403} and proxy.count("PUT") <= 2  # concurrency 4: both may be out
    write_keys(moto.secret_key)
    assert sc.proc is not None
    sc.proc.send_signal(signal.SIGHUP)  # what `sidecar reload` and systemctl reload send
    wait_until(lambda: drained(sc, client), timeout=20, what="both puts after the reload")
    assert moto.read("denied/1")[0] == b"one" and moto.read("denied/2")[0] == b"two"
    assert sc.journal_count("dead_letters") == 0 and spooled(sc) == []
    assert "not-the-secret" not in sc.log_text()
    assert sc.stop() == 0


# -- a bucket in another region (S3 answers 301 PermanentRedirect; moto does not: the proxy does) --


def bucket_elsewhere(moto: MotoS3, proxy: S3FaultProxy, name: str, region: str = "eu-west-1", *,
                     header: bool = True) -> MotoS3:
    """Make `name` in `region` (moto keeps it), and have the proxy answer for S3's regions."""
    there = dataclasses.replace(moto, region=region, bucket=name)
    there.client().create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": region})
    proxy.bucket_in(name, region, header=header)
    return there


def test_a_put_to_a_bucket_in_another_region_lands_and_the_region_is_remembered(
        short_tmp: Path, moto: MotoS3, proxy: S3FaultProxy) -> None:
    eu = bucket_elsewhere(moto, proxy, "sidecar-eu")
    sc = sidecar(short_tmp, proxy, moto)  # [s3] region us-east-1
    with Client(sc.endpoint, strict=True) as client:
        client.emit("s3.put", put(eu.bucket, "first.csv"), blob=b"a,b\n1,2\n")
        wait_until(lambda: drained(sc, client), timeout=30, what="the put after the redirect")
        client.emit("s3.put", put(eu.bucket, "second.csv"), blob=b"a,b\n3,4\n")
        client.emit("s3.put", put(moto.bucket, "home.csv"), blob=b"home")
        wait_until(lambda: drained(sc, client), timeout=30, what="the later puts")
    log = sc.log_text()
    assert sc.stop() == 0
    assert sc.query("SELECT COUNT(*) FROM dead_letters") == [(0,)]
    assert eu.read("first.csv")[0] == b"a,b\n1,2\n" and eu.read("second.csv")[0] == b"a,b\n3,4\n"
    assert moto.read("home.csv")[0] == b"home"
    # One 301, then straight to the bucket's region: the second put was signed for eu-west-1 at once.
    puts = [(r.path, r.status, r.outcome) for r in proxy.records if r.method == "PUT"]
    assert puts[:2] == [(f"/{eu.bucket}/first.csv", 301, "refused"), (f"/{eu.bucket}/first.csv", 200, "forwarded")]
    assert sorted(puts[2:]) == [(f"/{eu.bucket}/second.csv", 200, "forwarded"),
                                (f"/{moto.bucket}/home.csv", 200, "forwarded")]  # the lane's 4 workers: any order
    assert log.count("is in eu-west-1, not us-east-1") == 1


def test_the_region_is_read_from_the_redirects_body_without_the_header(tmp_path: Path, moto: MotoS3,
                                                                       proxy: S3FaultProxy) -> None:
    eu = bucket_elsewhere(moto, proxy, "sidecar-eu-body", header=False)
    body = b"only the body says where"
    spool = Spool(tmp_path)
    spool.create()
    path = spool.put(body)
    conn = S3Connector(S3Config(endpoint_url=proxy.url, region=moto.region),
                       Credentials(moto.access_key, moto.secret_key))
    request = PutObject(ObjectPut(eu.bucket, "k", "text/plain", {}), path, hashlib.sha256(body).hexdigest())

    async def go() -> None:
        try:
            await conn.send(Send([], request), unpaced)
        finally:
            await conn.aclose()

    asyncio.run(go())
    assert eu.read("k")[0] == body and conn.bucket_regions == {eu.bucket: "eu-west-1"}
    assert [(r.status, r.outcome) for r in proxy.records] == [(301, "refused"), (200, "forwarded")]
