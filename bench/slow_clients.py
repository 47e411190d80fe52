"""Slow gRPC clients beside normal ones (issue 27): does the server keep answering?

    .venv/bin/python bench/slow_clients.py [--slow 8 64] [--normal 10] [--timeout 5] [--seconds 2]
    .venv/bin/python bench/slow_clients.py --target HOST:PORT --model NAME   # a server already running

A slow client opens its own connection, starts a Predict call, declares a
large request message (`--declared-mb`, 60 MB by default: under the server's
64 MB limit, so it is accepted) in the 5-byte gRPC message prefix, then sends
one byte of it per second and never finishes. The grpc client library always
sends a unary request whole, so these clients speak HTTP/2 by hand over a
socket: the client preface, SETTINGS, one HEADERS frame (HPACK literals, no
Huffman, no dynamic table) and DATA frames; they acknowledge the server's
SETTINGS and PINGs so that the connection stays up.

For each count of slow clients, the script waits `--seconds` for them to
settle, then sends `--normal` Predict requests of 4 images each, one after
another, with a deadline of `--timeout` seconds, and prints how many
succeeded, how many were blocked (DEADLINE_EXCEEDED or UNAVAILABLE) and how
many slow streams the server still held open at the end (target: every normal
request succeeds, 0 blocked). Without `--target` it exports an untrained
16-bit DHN on 8x8x1 images and serves it in-process with
`tfhash.serving.ModelServer` and its defaults.

`hold_slow_streams` and `SlowStreams` are the reusable parts (bench/reliability.py
and tests/test_bounded_waits.py import them); `normal_predicts` sends the normal
requests.
"""

import argparse
import contextlib
import os
import select
import socket
import sys
import tempfile
import threading
import time

PREDICT_PATH = "/tensorflow.serving.PredictionService/Predict"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# HTTP/2 frame types and flags (RFC 9113, section 6).
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
ACK, END_HEADERS = 0x1, 0x4


def frame(kind, flags, stream, payload=b""):
    """One HTTP/2 frame: 24-bit length, type, flags, 31-bit stream id, payload."""
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _hpack_length(n):
    """An HPACK string length: a 7-bit prefix integer, Huffman bit off (RFC 7541, 5.1)."""
    if n < 127:
        return bytes([n])
    out, n = [127], n - 127
    while n >= 128:
        out.append(n % 128 + 128)
        n //= 128
    return bytes(out + [n])


def header_block(headers):
    """HPACK "literal header field without indexing, new name" for each (name, value)."""
    block = b""
    for name, value in headers:
        name, value = name.encode(), value.encode()
        block += b"\x00" + _hpack_length(len(name)) + name + _hpack_length(len(value)) + value
    return block


def _split_target(target):
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


class SlowStreams:
    """`n` slow gRPC calls held open against `target` until `close()` (a context manager).

    Each connection runs in a daemon thread of its own; it opens
    `streams_per_connection` calls (HTTP/2 streams 1, 3, 5, ...), declares a
    message of `declared_bytes` on each and then sends one more byte on each
    every `interval` seconds.

    Args:
        target: `host:port` of a gRPC server (IPv6 hosts in brackets).
        n: how many slow calls in all.
        declared_bytes: the message size each call declares (default 60 MB).
        interval: seconds between the bytes of a call (default 1).
        streams_per_connection: calls sharing one connection (default 1: a
            connection per slow client, as separate clients would).
        path: the gRPC method called (default Predict).
        reconnect: open a new connection, and its calls, whenever the server
            closes one (a persistent client; default False).
    """

    def __init__(self, target, n, *, declared_bytes=60 * 2**20, interval=1.0, streams_per_connection=1,
                 path=PREDICT_PATH, reconnect=False):
        if n < 0 or streams_per_connection < 1:
            raise ValueError(f"expected n >= 0 and streams_per_connection >= 1. "
                             f"Received: n={n}, streams_per_connection={streams_per_connection}")
        self.target, self.declared_bytes, self.interval, self.path = target, declared_bytes, interval, path
        self.reconnect = reconnect
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.opened = 0  # calls whose HEADERS and message prefix were sent
        self.ended = 0  # calls the server reset, or whose connection it closed
        self.bytes_sent = 0  # message bytes after the prefix, all calls together
        self.errors = []  # connection errors on our side (refused, reset)
        counts = [streams_per_connection] * (n // streams_per_connection)
        counts += [n % streams_per_connection] if n % streams_per_connection else []
        self._total = n
        self._threads = [threading.Thread(target=self._connection, args=(count,), daemon=True,
                                          name=f"slow-client-{i}") for i, count in enumerate(counts)]
        for thread in self._threads:
            thread.start()

    @property
    def held(self):
        """Calls opened and not ended by the server."""
        with self._lock:
            return self.opened - self.ended

    def stats(self):
        """{"opened", "held", "ended", "bytes_sent", "errors"} so far."""
        with self._lock:
            return {"opened": self.opened, "held": self.opened - self.ended, "ended": self.ended,
                    "bytes_sent": self.bytes_sent, "errors": list(self.errors)}

    def wait_opened(self, timeout=10.0):
        """Waits until every call is opened (or failed); returns whether all were."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(t.is_alive() for t in self._threads):
            with self._lock:
                if self.opened + len(self.errors) >= self._total:
                    break
            time.sleep(0.02)
        with self._lock:
            return self.opened >= self._total

    def close(self):
        """Stops sending and closes every connection (the server then cancels the calls)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _count(self, **changes):
        with self._lock:
            for key, value in changes.items():
                setattr(self, key, getattr(self, key) + value)

    def _connection(self, count):
        self._session(count)
        while self.reconnect and not self._stop.wait(0.05):
            self._session(count)

    def _session(self, count):
        host, port = _split_target(self.target)
        live = set()
        try:
            with socket.create_connection((host, port), timeout=10) as sock:
                headers = header_block([(":method", "POST"), (":scheme", "http"), (":path", self.path),
                                        (":authority", self.target), ("content-type", "application/grpc"),
                                        ("te", "trailers")])
                prefix = b"\x00" + self.declared_bytes.to_bytes(4, "big")  # not compressed, length
                streams = range(1, 2 * count, 2)
                sock.sendall(PREFACE + frame(SETTINGS, 0, 0) + b"".join(
                    frame(HEADERS, END_HEADERS, s, headers) + frame(DATA, 0, s, prefix) for s in streams))
                live.update(streams)
                self._count(opened=count)
                buffer, next_byte = b"", time.monotonic() + self.interval
                while live and not self._stop.is_set():
                    wait = max(0.0, min(next_byte - time.monotonic(), 0.1))
                    if select.select([sock], [], [], wait)[0]:
                        chunk = sock.recv(65536)
                        if not chunk:  # the server closed the connection
                            break
                        buffer = self._answer(sock, buffer + chunk, live)
                    if time.monotonic() >= next_byte:
                        sock.sendall(b"".join(frame(DATA, 0, stream, b"\x00") for stream in sorted(live)))
                        self._count(bytes_sent=len(live))
                        next_byte += self.interval
        except OSError as error:
            with self._lock:
                self.errors.append(f"{type(error).__name__}: {error}")
        finally:
            self._count(ended=len(live))

    def _answer(self, sock, buffer, live):
        """Handles the whole frames in `buffer` (acks SETTINGS and PING, drops
        reset streams); returns what is left of it."""
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[:3], "big")
            if len(buffer) < 9 + length:
                break
            kind, flags = buffer[3], buffer[4]
            stream = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
            payload, buffer = buffer[9 : 9 + length], buffer[9 + length :]
            if kind == SETTINGS and not flags & ACK:
                sock.sendall(frame(SETTINGS, ACK, 0))
            elif kind == PING and not flags & ACK:
                sock.sendall(frame(PING, ACK, 0, payload))
            elif kind == RST_STREAM or (kind == HEADERS and flags & 0x1):  # reset, or trailers: ended
                if stream in live:
                    live.discard(stream)
                    self._count(ended=1)
            elif kind == GOAWAY:
                last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                for gone in [s for s in live if s > last]:
                    live.discard(gone)
                    self._count(ended=1)
        return buffer


def hold_slow_streams(target, n, seconds, **options):
    """Holds `n` slow calls against `target` for `seconds`, then closes them;
    returns their `SlowStreams.stats()` taken just before closing.
    `options` go to `SlowStreams`."""
    with SlowStreams(target, n, **options) as slow:
        slow.wait_opened()
        time.sleep(seconds)
        return slow.stats()


def normal_predicts(target, model_name, images, count, timeout):
    """`count` Predict requests of `images`, one after another, each with a
    deadline of `timeout` seconds, on one channel; returns {"ok", "blocked",
    "errors", "slowest_s"} (blocked: DEADLINE_EXCEEDED or UNAVAILABLE)."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
    result = {"ok": 0, "blocked": 0, "errors": [], "slowest_s": 0.0}
    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for _ in range(count):
            start = time.monotonic()
            try:
                stub.Predict(request, timeout=timeout)
                result["ok"] += 1
            except grpc.RpcError as error:
                if error.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                    result["blocked"] += 1
                else:
                    result["errors"].append(f"{error.code().name}: {error.details()}")
            result["slowest_s"] = max(result["slowest_s"], time.monotonic() - start)
    return result


@contextlib.contextmanager
def tiny_server(**options):
    """An untrained 16-bit DHN on 8x8x1 images, exported and served in-process;
    yields (address, model name, 4 images). `options` go to ModelServer."""
    import keras
    import numpy as np

    from tfhash.export import export_savedmodel
    from tfhash.models import DHN
    from tfhash.serving import ModelServer

    keras.utils.set_random_seed(0)
    model = DHN(bits=16, input_shape=(8, 8, 1))
    model.build((None, 8, 8, 1))
    with tempfile.TemporaryDirectory(prefix="tfhash-slow-clients-") as base:
        export_savedmodel(model, base, name="dhn")
        with ModelServer(base, model_name="dhn", poll_seconds=0, **options) as server:
            yield server.address, "dhn", np.zeros((4, 8, 8, 1), np.uint8)


def probe(target, model_name, images, slow_counts, normal, timeout, settle, declared_mb):
    """For each count of slow clients: the normal requests' result and the slow calls still held."""
    rows = []
    for n in slow_counts:
        with SlowStreams(target, n, declared_bytes=int(declared_mb * 2**20)) as slow:
            slow.wait_opened()
            time.sleep(settle)
            result = normal_predicts(target, model_name, images, normal, timeout)
            rows.append({"slow": n, **result, "held": slow.held, "slow_errors": slow.stats()["errors"][:3]})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", type=int, nargs="+", default=[8, 64], help="counts of slow clients")
    parser.add_argument("--normal", type=int, default=10, help="normal requests per count (default 10)")
    parser.add_argument("--timeout", type=float, default=5.0, help="deadline of a normal request, s (default 5)")
    parser.add_argument("--seconds", type=float, default=2.0, help="slow clients settle this long first (default 2)")
    parser.add_argument("--declared-mb", type=float, default=60.0, help="message size each slow call declares")
    parser.add_argument("--target", help="HOST:PORT of a running server (default: serve a tiny model here)")
    parser.add_argument("--model", default="dhn", help="model name at --target; it takes (n, 8, 8, 1) uint8")
    args = parser.parse_args(argv)
    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]))
    if args.target:
        import numpy as np

        context = contextlib.nullcontext((args.target, args.model, np.zeros((4, 8, 8, 1), np.uint8)))
    else:
        context = tiny_server()
    with context as (target, name, images):
        rows = probe(target, name, images, args.slow, args.normal, args.timeout, args.seconds, args.declared_mb)
    print(f"{'slow clients':>12s} {'normal ok':>9s} {'blocked':>7s} {'errors':>6s} {'slowest s':>9s} "
          f"{'slow held':>9s}")
    for row in rows:
        print(f"{row['slow']:12d} {row['ok']:>6d}/{args.normal:<2d} {row['blocked']:7d} {len(row['errors']):6d} "
              f"{row['slowest_s']:9.2f} {row['held']:9d}")
        for error in row["errors"][:3] + row["slow_errors"]:
            print(f"    {error}")
    return 0 if all(row["ok"] == args.normal for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
