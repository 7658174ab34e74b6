#!/usr/bin/env python3
"""A reference IP loudspeaker for the node's MQTT speaker protocol, for interop tests and benchmarks.

Connection: MQTT 3.1.1 (paho-mqtt 2.x), clean session, client id = the speaker id (--id), signed in
with --username and the password in --password-file (surrounding whitespace stripped). paho
reconnects by itself when the broker goes away; every (re)connection subscribes again.

Topics (all under pa/<id>/, the only ones a speaker account may use on the node's broker):
  pa/<id>/cmd        the node -> speaker, subscribed at QoS 0. JSON commands:
                       {"op": "play", "broadcast": "<uuid>", "url": "/api/v1/pa/audio/<sha256>",
                        "sha256": "<hex>", "repeat": N, "priority": 0-4, ...}   (extra keys ignored)
                       {"op": "stop", "broadcast": "<uuid>"}
                     Malformed JSON and unknown ops are logged to stderr and ignored.
  pa/<id>/heartbeat  speaker -> node, retained, QoS 0, right after each connection and every
                     --heartbeat seconds (default 30):
                       {"speaker": id, "state": "idle"|"playing", "broadcast": <id or null>,
                        "at": <unix ms>}
                     ("playing" from the moment a play is accepted, including its download.)
  pa/<id>/status     speaker -> node, QoS 1: {"broadcast": id, "state": S, "detail": "..."} with
                     S = "started" | "finished" | "failed".

Play: the audio is fetched over HTTP from `url`, resolved against --http (the node's base URL) with
urljoin, with HTTP Basic auth (same username and password) and a 10 s timeout; the body's SHA-256
must equal `sha256`. Any failure publishes "failed" with a short detail ("http 401",
"hash mismatch", "timeout", ...). Otherwise "started" is published, the audio is played `repeat`
times -- by running --player (a command with a {file} placeholder, e.g. "aplay -q {file}") on a
temporary copy each round, or, without --player, by sleeping the WAV's duration (data bytes / byte
rate from the RIFF header; 1 s if it is not a WAV) times --speed -- and then "finished" (detail "").
  * A play whose priority is higher than or equal to the current one's replaces it: the old one is
    stopped silently (no status for it) and the new one is played. A play of lower priority is
    refused at once with "failed", detail "busy".
  * A stop for the current broadcast (or with no broadcast) aborts it within 0.5 s and publishes
    "finished" with detail "stopped" once the audio has stopped (at once if it is still being
    downloaded; the download is then abandoned). A stop for anything else is ignored.
A bad play command that still names a broadcast gets "failed" with detail "bad command".

--events FILE appends one JSON line per event, flushed at once, each with a wall-clock "t_ns"
(time.time_ns()): {"event": "command", "op", "broadcast"} when a command arrives;
{"event": "first_audio_byte", "broadcast"} when the first body bytes of the download arrive;
{"event": "started"|"finished"|"failed", "broadcast", "detail"} with each status published; and
{"event": "stopped", "broadcast", "detail": "stopped"|"pre-empted"} when playback is aborted.
--out-dir DIR saves each downloaded (and verified) file there as <broadcast>.wav.

Prints exactly "ready" on stdout once connected and subscribed (SUBACK received; first time only).
Exits with status 0 on SIGTERM or SIGINT.
"""
import argparse
import base64
import hashlib
import json
import os
import shlex
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

FETCH_TIMEOUT = 10.0
CHUNK = 16384


def log(msg: str) -> None:
    print(f"pa_speaker: {msg}", file=sys.stderr, flush=True)


def wav_seconds(body: bytes) -> float:
    """Duration of a RIFF/WAVE file from its header (data bytes / byte rate); 1 s if not a WAV."""
    if len(body) < 12 or body[:4] != b"RIFF" or body[8:12] != b"WAVE":
        return 1.0
    pos, byte_rate, data_bytes = 12, None, None
    while pos + 8 <= len(body):
        cid, size = body[pos:pos + 4], struct.unpack("<I", body[pos + 4:pos + 8])[0]
        start = pos + 8
        if cid == b"fmt " and size >= 12 and start + 12 <= len(body):
            byte_rate = struct.unpack("<I", body[start + 8:start + 12])[0]
        elif cid == b"data":
            data_bytes = min(size, len(body) - start)  # streamed WAVs may say 0xFFFFFFFF
            break
        pos = start + size + (size & 1)
    if not byte_rate or data_bytes is None:
        return 1.0
    return data_bytes / byte_rate


class Events:
    def __init__(self, path):
        self.file = open(path, "a", encoding="utf-8") if path else None
        self.lock = threading.Lock()

    def __call__(self, event: str, t_ns=None, **fields) -> None:
        if self.file is None:
            return
        line = json.dumps({"event": event, **fields, "t_ns": t_ns or time.time_ns()})
        with self.lock:
            self.file.write(line + "\n")
            self.file.flush()


class Session:
    """One play command being downloaded or played."""

    def __init__(self, broadcast: str, priority: int):
        self.broadcast = broadcast
        self.priority = priority
        self.stop = threading.Event()
        self.reason = ""  # "stopped" (a stop command), "pre-empted" or "shutdown"
        self.thread = None
        self.playing = False  # past "started" (set under Speaker.lock)
        self.reported = False  # its stop already answered (set under Speaker.lock)


class Speaker:
    def __init__(self, a, password):
        self.a = a
        self.id = a.id
        self.events = Events(a.events)
        self.auth = None
        if a.username is not None:
            token = f"{a.username}:{password or ''}".encode()
            self.auth = "Basic " + base64.b64encode(token).decode()
        self.lock = threading.Lock()
        self.current = None
        self.ready_printed = False
        self.sub_mid = None
        self.shutdown = False  # set by the signal handler, which must take no locks
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.id, clean_session=True,
                                  protocol=mqtt.MQTTv311)
        if a.username is not None:
            self.client.username_pw_set(a.username, password)
        self.client.reconnect_delay_set(min_delay=1, max_delay=5)
        self.client.on_connect = self.on_connect
        self.client.on_subscribe = self.on_subscribe
        self.client.on_disconnect = self.on_disconnect
        self.client.on_message = self.on_message

    # --- MQTT ---------------------------------------------------------------------------------

    def on_connect(self, client, _userdata, _flags, reason_code, _properties):
        if reason_code.is_failure:
            log(f"connection refused: {reason_code}")
            return
        _, mid = client.subscribe(f"pa/{self.id}/cmd", qos=0)
        self.sub_mid = mid
        self.heartbeat()

    def on_subscribe(self, _client, _userdata, mid, reason_codes, _properties):
        if any(rc.is_failure for rc in reason_codes):
            log(f"subscription to pa/{self.id}/cmd refused: {reason_codes}")
            return
        if mid == self.sub_mid and not self.ready_printed:
            self.ready_printed = True
            print("ready", flush=True)

    def on_disconnect(self, _client, _userdata, _flags, reason_code, _properties):
        if not self.shutdown:
            log(f"disconnected ({reason_code}); reconnecting")

    def heartbeat(self) -> None:
        with self.lock:
            cur = self.current
        payload = {"speaker": self.id, "state": "playing" if cur else "idle",
                   "broadcast": cur.broadcast if cur else None, "at": int(time.time() * 1000)}
        self.client.publish(f"pa/{self.id}/heartbeat", json.dumps(payload), qos=0, retain=True)

    def status(self, broadcast: str, state: str, detail: str = "") -> None:
        self.client.publish(f"pa/{self.id}/status",
                            json.dumps({"broadcast": broadcast, "state": state, "detail": detail}), qos=1)
        self.events(state, broadcast=broadcast, detail=detail)

    def on_message(self, _client, _userdata, msg):
        arrived = time.time_ns()
        try:
            cmd = json.loads(msg.payload)
        except (ValueError, UnicodeDecodeError) as e:
            log(f"malformed command ignored: {e}")
            return
        if not isinstance(cmd, dict):
            log("command is not a JSON object; ignored")
            return
        op, broadcast = cmd.get("op"), cmd.get("broadcast")
        self.events("command", t_ns=arrived, op=op, broadcast=broadcast)
        try:
            if op == "play":
                self.play(cmd)
            elif op == "stop":
                self.stop(broadcast)
            else:
                log(f"unknown op {op!r} ignored")
        except Exception as e:  # never let a command kill the network thread
            log(f"command {op!r} failed: {e!r}")

    # --- commands -----------------------------------------------------------------------------

    def play(self, cmd: dict) -> None:
        broadcast = cmd.get("broadcast")
        if not isinstance(broadcast, str) or not broadcast:
            log("play without a broadcast id ignored")
            return
        url, sha = cmd.get("url"), cmd.get("sha256")
        repeat, priority = cmd.get("repeat", 1), cmd.get("priority", 0)
        if (not isinstance(url, str) or not url or not isinstance(sha, str) or not sha
                or not isinstance(repeat, int) or isinstance(repeat, bool)
                or not isinstance(priority, int) or isinstance(priority, bool)):
            log(f"bad play command for {broadcast}: {cmd}")
            self.status(broadcast, "failed", "bad command")
            return
        session = Session(broadcast, priority)
        with self.lock:
            old = self.current
            if old is not None and priority < old.priority:
                busy = True
            else:
                busy = False
                if old is not None:
                    old.reason = "pre-empted"
                    old.stop.set()
                    old.reported = not old.playing  # a download is abandoned at once
                self.current = session
                session.thread = threading.Thread(target=self.run, args=(session, old, url, sha.lower(),
                                                                         max(1, repeat)), daemon=True)
                session.thread.start()
        if not busy and old is not None and old.reported:
            self.events("stopped", broadcast=old.broadcast, detail="pre-empted")
        if busy:
            log(f"play {broadcast} (priority {priority}) refused: {old.broadcast} plays at {old.priority}")
            self.status(broadcast, "failed", "busy")

    def stop(self, broadcast) -> None:
        with self.lock:
            cur = self.current
            if cur is None or (broadcast is not None and cur.broadcast != broadcast):
                log(f"stop for {broadcast} ignored: not playing it")
                return
            cur.reason = "stopped"
            cur.stop.set()
            if cur.playing:
                return  # the playback thread answers once the audio has stopped
            # Still downloading: answer now rather than after a slow server, and free the speaker.
            cur.reported = True
            self.current = None
        self.events("stopped", broadcast=cur.broadcast, detail="stopped")
        self.status(cur.broadcast, "finished", "stopped")

    # --- playback -----------------------------------------------------------------------------

    def fetch(self, s: Session, url: str):
        """The body, or None if stopped meanwhile; raises Failed on errors."""
        full = urllib.parse.urljoin(self.a.http or "", url)
        if not urllib.parse.urlparse(full).scheme:
            raise Failed("no base URL for a relative url")
        req = urllib.request.Request(full)
        if self.auth:
            req.add_header("Authorization", self.auth)
        deadline = time.monotonic() + FETCH_TIMEOUT
        chunks = []
        try:
            with urllib.request.urlopen(req, timeout=FETCH_TIMEOUT) as resp:
                first = True
                while True:
                    if s.stop.is_set():
                        return None
                    if time.monotonic() > deadline:
                        raise Failed("timeout")
                    chunk = resp.read1(CHUNK) if hasattr(resp, "read1") else resp.read(CHUNK)
                    if not chunk:
                        break
                    if first:
                        first = False
                        self.events("first_audio_byte", broadcast=s.broadcast)
                    chunks.append(chunk)
        except urllib.error.HTTPError as e:
            raise Failed(f"http {e.code}") from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise Failed("timeout") from None
            raise Failed(f"fetch failed: {reason}") from None
        except (socket.timeout, TimeoutError):
            raise Failed("timeout") from None
        except (OSError, ValueError) as e:
            raise Failed(f"fetch failed: {e}") from None
        return b"".join(chunks)

    def run(self, s: Session, old, url: str, sha: str, repeat: int) -> None:
        try:
            self.run_inner(s, old, url, sha, repeat)
        except Failed as e:
            if not s.stop.is_set():
                self.status(s.broadcast, "failed", str(e))
        except Exception as e:
            log(f"playback of {s.broadcast} crashed: {e!r}")
            if not s.stop.is_set():
                self.status(s.broadcast, "failed", f"speaker error: {e}"[:200])
        finally:
            with self.lock:
                if self.current is s:
                    self.current = None

    def aborted(self, s: Session) -> None:
        if s.reported:
            return
        self.events("stopped", broadcast=s.broadcast, detail=s.reason)
        if s.reason == "stopped":
            self.status(s.broadcast, "finished", "stopped")

    def run_inner(self, s: Session, old, url: str, sha: str, repeat: int) -> None:
        body = self.fetch(s, url)
        if body is None:
            return self.aborted(s)
        if hashlib.sha256(body).hexdigest() != sha:
            raise Failed("hash mismatch")
        if self.a.out_dir:
            with open(os.path.join(self.a.out_dir, f"{os.path.basename(s.broadcast)}.wav"), "wb") as f:
                f.write(body)
        if old is not None and old.playing and old.thread is not None:
            old.thread.join(timeout=1.0)  # the pre-empted one's player must be gone first
        with self.lock:
            if not s.stop.is_set():
                s.playing = True
        if not s.playing:
            return self.aborted(s)
        self.status(s.broadcast, "started")
        if self.a.player:
            stopped = self.play_with_player(s, body, repeat)
        else:
            stopped = s.stop.wait(wav_seconds(body) * self.a.speed * repeat)
        if stopped:
            return self.aborted(s)
        self.status(s.broadcast, "finished")

    def play_with_player(self, s: Session, body: bytes, repeat: int) -> bool:
        """Runs --player `repeat` times; True if stopped. Raises Failed if the player fails."""
        fd, path = tempfile.mkstemp(prefix="pa_speaker_", suffix=".wav")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body)
            argv = [part.replace("{file}", path) for part in shlex.split(self.a.player)]
            for _ in range(repeat):
                try:
                    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
                except OSError as e:
                    raise Failed(f"player: {e.strerror or e}") from None
                while True:
                    try:
                        code = proc.wait(timeout=0.05)
                        break
                    except subprocess.TimeoutExpired:
                        if s.stop.is_set():
                            proc.terminate()
                            try:
                                proc.wait(timeout=0.3)
                            except subprocess.TimeoutExpired:
                                proc.kill()
                                proc.wait()
                            return True
                if code != 0:
                    raise Failed(f"player exit {code}")
                if s.stop.is_set():
                    return True
            return False
        finally:
            try:
                os.unlink(path)
            except OSError:
                pass

    # --- main loop ----------------------------------------------------------------------------

    def serve(self) -> None:
        self.client.connect_async(self.a.host, self.a.port, keepalive=30)
        self.client.loop_start()
        try:
            next_beat = time.monotonic() + self.a.heartbeat
            while not self.shutdown:
                time.sleep(0.05)
                if time.monotonic() >= next_beat:
                    next_beat += self.a.heartbeat
                    if self.client.is_connected():
                        self.heartbeat()
        finally:
            with self.lock:
                cur = self.current
                if cur is not None:
                    cur.reason = "shutdown"
                    cur.stop.set()
            if cur is not None and cur.thread is not None:
                cur.thread.join(timeout=1.0)
            self.client.disconnect()
            self.client.loop_stop()


class Failed(Exception):
    """A play that failed, with the detail to report."""


def main() -> None:
    p = argparse.ArgumentParser(description="Reference IP loudspeaker for the node's MQTT speaker protocol.")
    p.add_argument("--id", required=True, help="speaker id: MQTT client id and topic pa/<id>/...")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--username")
    p.add_argument("--password-file")
    p.add_argument("--http", help="the node's base URL for relative audio URLs, e.g. http://127.0.0.1:8080")
    p.add_argument("--heartbeat", type=float, default=30.0, help="seconds between heartbeats")
    p.add_argument("--player", help="command to play a file, with a {file} placeholder, e.g. 'aplay -q {file}'")
    p.add_argument("--speed", type=float, default=1.0, help="simulated playing time factor (no --player)")
    p.add_argument("--events", metavar="FILE", help="append one JSON line per event")
    p.add_argument("--out-dir", metavar="DIR", help="save each fetched audio file as <broadcast>.wav")
    a = p.parse_args()
    password = None
    if a.password_file:
        with open(a.password_file, encoding="utf-8") as f:
            password = f.read().strip()
    if a.out_dir:
        os.makedirs(a.out_dir, exist_ok=True)
    speaker = Speaker(a, password)

    def on_signal(_signum, _frame):
        speaker.shutdown = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    speaker.serve()


if __name__ == "__main__":
    main()
