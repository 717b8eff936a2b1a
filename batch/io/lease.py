"""One run per output: a lease object, `_lease.json`, under the output.

The lease says who writes the output (run id, host, pid, since when) and until when it
holds (`expires`). It is taken before anything is written under the output, renewed by a
heartbeat thread, and deleted at the end of the run, whatever the outcome. A killed driver
stops renewing: once `expires` has passed, the next run takes the lease over. A holder on
this machine whose process is gone is taken over at once (same host and PID namespace, and
no live process with that pid and start time), so a scheduler's immediate retry on the same
node does not wait for the expiry.

Every change is conditional, so two runs racing for the same lease cannot both win:

- S3: create is put-if-absent (`If-None-Match: *`); renew, take-over and release are
  compare-and-swap on the ETag the writer last saw (`If-Match`). A store that refuses
  conditional headers gets a best effort instead: unconditional write, then read back and
  keep the lease only if it still names this run (a warning says so once).
- Local: create is a hard link of a complete temporary file (fails if the name exists,
  like O_CREAT|O_EXCL, and the content is never seen half-written); renew, take-over and
  release compare the content under an exclusive lock on the output folder.

Clocks of different machines differ: `expires` is written by the holder's clock and read
by the taker's, so the time to live must be much longer than the skew (default 10 min).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import getpass
import hashlib
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

from batch.io.storage import Location, StorageError

log = logging.getLogger(__name__)

LEASE = "_lease.json"


class LeaseHeld(Exception):
    """Another run holds the output's lease; the message names it."""


class LeaseLost(Exception):
    """This run's lease was taken over (its heartbeat stalled past the expiry)."""


@dataclass(frozen=True)
class Holder:
    """What the lease object says."""

    run_id: str
    owner: str
    host: str
    pid: int
    pid_started: float
    pid_namespace: str
    acquired: float
    heartbeat: float
    expires: float

    @classmethod
    def me(cls, run_id: str, ttl: float) -> "Holder":
        import psutil

        now = time.time()
        return cls(
            run_id=run_id, owner=_user(), host=socket.gethostname(), pid=os.getpid(),
            pid_started=psutil.Process().create_time(), pid_namespace=_pid_namespace(),
            acquired=now, heartbeat=now, expires=now + ttl,
        )  # fmt: skip

    def renewed(self, ttl: float) -> "Holder":
        now = time.time()
        return Holder(**{**self.__dict__, "heartbeat": now, "expires": now + ttl})

    def to_bytes(self) -> bytes:
        return json.dumps(self.__dict__, indent=2, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Holder | None":
        try:
            return cls(**json.loads(data))
        except (ValueError, TypeError):  # unreadable or written by another version: treat as expired
            return None

    def is_stale(self) -> bool:
        return time.time() > self.expires or self._process_gone_here()

    def _process_gone_here(self) -> bool:
        """Only on the holder's own machine can one know its process is gone."""
        if self.host != socket.gethostname() or self.pid_namespace != _pid_namespace():
            return False
        import psutil

        try:
            return abs(psutil.Process(self.pid).create_time() - self.pid_started) > 0.01  # pid reused
        except psutil.NoSuchProcess:
            return True

    def describe(self) -> str:
        return (
            f"run {self.run_id} (host {self.host}, pid {self.pid}, user {self.owner}) since {_iso(self.acquired)}, "
            f"last heartbeat {_iso(self.heartbeat)}, expires {_iso(self.expires)}"
        )


class Lease:
    """This run's hold on one output. Use as a context manager: taken on entry (or
    LeaseHeld), renewed in the background, released on exit."""

    def __init__(self, output: Location, run_id: str, ttl_seconds: float):
        self.uri = output.join(LEASE).uri
        self.store = _S3Object(output.join(LEASE)) if output.is_s3 else _LocalObject(output.join(LEASE))
        self.run_id, self.ttl = run_id, ttl_seconds
        self.holder: Holder | None = None
        self.tag: str | None = None
        self.lost = False
        self.taken_over_from: str | None = None  # the stale holder this run replaced, for the log
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "Lease":
        self.take()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def take(self) -> None:
        """Create the lease, or take over a stale one; LeaseHeld if a live run holds it."""
        me = Holder.me(self.run_id, self.ttl)
        try:
            tag = self.store.create(me.to_bytes())
            if tag is None:
                tag = self._take_over(me)
        except LeaseHeld:
            raise
        except Exception as exc:  # noqa: BLE001 - access denied, no bucket, store gone: one line naming the URI
            raise StorageError(f"{self.uri}: could not take the output's lease: {exc}") from exc
        self.holder, self.tag = me, tag
        self._thread = threading.Thread(target=self._heartbeat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def _take_over(self, me: Holder) -> str:
        current = self.store.read()
        if current is None:  # released in between: try once more from scratch
            if (tag := self.store.create(me.to_bytes())) is not None:
                return tag
            current = self.store.read()
        data, tag = current if current else (b"", "")
        holder = Holder.from_bytes(data)
        if holder is not None and holder.run_id == self.run_id:  # our own create, answered late
            return tag
        if holder is not None and not holder.is_stale():
            raise LeaseHeld(f"{self.uri}: the output is being written by {holder.describe()}")
        new_tag = self.store.replace(me.to_bytes(), tag)
        if new_tag is None:  # another run took it over first
            winner = self.store.read()
            who = Holder.from_bytes(winner[0]) if winner else None
            raise LeaseHeld(f"{self.uri}: the output is being written by {who.describe() if who else 'another run'}")
        self.taken_over_from = holder.describe() if holder else "an unreadable lease"
        return new_tag

    def check(self) -> None:
        """Raise LeaseLost if another run took the lease over: this run must stop writing."""
        if self.lost:
            raise LeaseLost(f"{self.uri}: lease lost to another run (this run's heartbeat stalled); stopping")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.tag is not None and not self.lost:
            try:
                self.store.delete(self.tag)
            except Exception as exc:  # noqa: BLE001 - an unreleased lease only expires later
                log.warning("%s: could not release the lease (%s); it expires by itself", self.uri, exc)
        self.tag = None

    def _heartbeat(self) -> None:
        interval = max(self.ttl / 3, 0.2)
        while not self._stop.wait(interval):
            try:
                self._renew()
            except Exception as exc:  # noqa: BLE001 - a transient error: the next beat retries
                log.warning("%s: lease heartbeat failed: %s", self.uri, exc)
            if self.lost:
                return

    def _renew(self) -> None:
        renewed = self.holder.renewed(self.ttl)
        tag = self.store.replace(renewed.to_bytes(), self.tag)
        if tag is None:
            current = self.store.read()
            holder = Holder.from_bytes(current[0]) if current else None
            if holder is None or holder.run_id != self.run_id:
                self.lost = True
                log.error("%s: lease taken over by %s", self.uri, holder.describe() if holder else "nobody")
                return
            tag = current[1]  # our own write, answered late
        self.holder, self.tag = renewed, tag


def peek(output: Location) -> Holder | None:
    """The lease's holder, if any (for messages and tests)."""
    store = _S3Object(output.join(LEASE)) if output.is_s3 else _LocalObject(output.join(LEASE))
    current = store.read()
    return Holder.from_bytes(current[0]) if current else None


# --- the lease object, with conditional writes ------------------------------------------------


class _LocalObject:
    """A local file; the tag is the hash of its content (which changes on every write)."""

    def __init__(self, location: Location):
        self.path = location.path

    def create(self, data: bytes) -> str | None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = f"{self.path}.{os.getpid()}-{threading.get_ident()}.tmp"
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, self.path)  # atomic, fails if the name exists
        except FileExistsError:
            return None
        finally:
            os.unlink(tmp)
        return _hash(data)

    def read(self) -> tuple[bytes, str] | None:
        try:
            with open(self.path, "rb") as stream:
                data = stream.read()
        except FileNotFoundError:
            return None
        return data, _hash(data)

    def replace(self, data: bytes, tag: str) -> str | None:
        with self._locked():
            current = self.read()
            if current is None or current[1] != tag:
                return None
            tmp = f"{self.path}.{os.getpid()}-{threading.get_ident()}.tmp"
            with open(tmp, "wb") as out:
                out.write(data)
            os.replace(tmp, self.path)
        return _hash(data)

    def delete(self, tag: str) -> None:
        with self._locked():
            current = self.read()
            if current is not None and current[1] == tag:
                os.unlink(self.path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(os.path.dirname(self.path), os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


class _S3Object:
    """An S3 object; the tag is its ETag."""

    _UNSUPPORTED = {"NotImplemented", "InvalidArgument", "InvalidRequest"}

    def __init__(self, location: Location):
        self.bucket, _, self.key = location.path.partition("/")
        self.storage = location.storage
        self.conditional = True

    @property
    def client(self) -> Any:
        return _s3_client(self.storage.endpoint_url, self.storage.region, self.storage.retries)

    def create(self, data: bytes) -> str | None:
        return self._put(data, IfNoneMatch="*")

    def read(self) -> tuple[bytes, str] | None:
        from botocore.exceptions import ClientError

        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                return None
            raise
        return answer["Body"].read(), answer["ETag"]

    def replace(self, data: bytes, tag: str) -> str | None:
        return self._put(data, IfMatch=tag)

    def delete(self, tag: str) -> None:
        from botocore.exceptions import ClientError

        current = self.read()
        if current is None or current[1] != tag:
            return
        try:
            condition = {"IfMatch": tag} if self.conditional else {}
            self.client.delete_object(Bucket=self.bucket, Key=self.key, **condition)
        except ClientError as exc:
            if _code(exc) not in ("PreconditionFailed", "NoSuchKey", "404"):
                raise

    def _put(self, data: bytes, **condition: str) -> str | None:
        """The write if its condition holds (its ETag), None if it does not."""
        from botocore.exceptions import ClientError

        try:
            if self.conditional:
                return self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data, **condition)["ETag"]
        except ClientError as exc:
            code = _code(exc)
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412", "409", "404"):
                return None
            if code not in self._UNSUPPORTED:
                raise
            log.warning("s3://%s/%s: no conditional writes here (%s); lease is best effort", self.bucket, self.key, code)
            self.conditional = False
        return self._put_best_effort(data, **condition)

    def _put_best_effort(self, data: bytes, **condition: str) -> str | None:
        """Check, write, read back: two runs racing within the same second may both win."""
        current = self.read()
        if ("IfNoneMatch" in condition and current is not None) or (
            "IfMatch" in condition and (current is None or current[1] != condition["IfMatch"])
        ):
            return None
        self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data)
        time.sleep(1.0)  # let a racing writer's put land, then see who is last
        after = self.read()
        return after[1] if after is not None and after[0] == data else None


_clients: dict[tuple, Any] = {}


def _s3_client(endpoint_url: str | None, region: str | None, retries: int) -> Any:
    """botocore, not pyarrow: pyarrow's filesystem cannot send conditional headers.
    Credentials come from the standard AWS chain, like everywhere else."""
    key = (endpoint_url, region, retries)
    if key not in _clients:
        import botocore.session
        from botocore.config import Config

        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        session = botocore.session.get_session()
        _clients[key] = session.create_client(
            "s3",
            endpoint_url=endpoint or None,
            region_name=region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            config=Config(
                retries={"max_attempts": max(1, retries), "mode": "standard"}, connect_timeout=10, read_timeout=60
            ),
        )  # fmt: skip
    return _clients[key]


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", {}) or {}
    return str(response.get("Error", {}).get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode"))


def _hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return str(os.getuid())


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
