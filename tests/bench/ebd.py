"""Emergency-broadcast platform figures; called by ebd.sh with the release binary.

One township node as the platform's adaptor: a zone with a relay board (pymodbus slave on a socat
pseudo-terminal pair, coil writes timestamped by the slave) and the reference IP speaker
(tests/interop/pa_speaker.py, its first audio byte timestamped). The upper platform is
tests/interop/ebd_platform.py, imported: each package is built and signed (gmssl) before its clock
starts, with a ~3 MB MP3 that differs per package (its ID3 padding), so no attachment is cached.

- POST to amplifier: from just before the POST of a signed EBM package (MsgType 1, severity red) to
  (a) the relay coil set, as the slave saw it, and (b) the first audio byte reaching the speaker.
  The broadcast is left to finish before the next package.
- The platform side's own SM2: gmssl verifications per second of the same shared Jiangsu package,
  for the ratio with the node's (examples/ebd_verify prints those).
Every clock is this machine's wall clock (time.time_ns), shared by the slave, the speaker and here.
"""
import os, subprocess, sys, tempfile, time, wave

from benchlib import free_port, wait_port

BIN, SLAVE_PORT, NODE_PORT, COIL_LOG, ROOT = sys.argv[1:6]
sys.path.insert(0, os.path.join(ROOT, "tests/interop"))
import ebd_platform as platform  # noqa: E402

PACKAGES = int(os.environ.get("PACKAGES", "100"))
ENV = {k: v for k, v in os.environ.items() if not k.startswith("TOWNSHIP_")} | {"RUST_LOG": "warn"}
ADMIN = "Bench-Admin-Pass-2026"
SPEAKER_PW = "bench-speaker-password"
NODE_EBRID = "53307230010000314010201"


def lines(path):
    try:
        return open(path).read().splitlines()
    except FileNotFoundError:
        return []


def coil_writes():
    return [(f[2] == "1", int(f[3])) for f in (l.split() for l in lines(COIL_LOG)) if len(f) == 4]


def first_audio_bytes(path):
    import json
    out = []
    for l in lines(path):
        try:
            e = json.loads(l)
        except ValueError:
            continue
        if e.get("event") == "first_audio_byte":
            out.append(e["t_ns"])
    return out


def wait(what, check, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        v = check()
        if v:
            return v
        time.sleep(0.002)
    raise SystemExit(f"timed out waiting for {what}")


def pct(values, p):
    s = sorted(values)
    return s[max(0, int(len(s) * p + 0.5) - 1)]


def make_mp3(tmp):
    """About 3 MB: 190 s of a quiet tone at 128 kbit/s, encoded by lame."""
    wav = os.path.join(tmp, "tone.wav")
    with wave.open(wav, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(22050)
        import math, struct
        second = b"".join(struct.pack("<h", int(2000 * math.sin(2 * math.pi * 440 * i / 22050))) for i in range(22050))
        for _ in range(190):
            w.writeframes(second)
    mp3 = os.path.join(tmp, "tone.mp3")
    subprocess.run(["lame", "--quiet", "-b", "128", wav, mp3], check=True)
    return open(mp3, "rb").read()


def with_padding(mp3, n):
    """The same audio behind an ID3v2.3 tag of n bytes of padding: other bytes, other hash."""
    size = n
    syncsafe = bytes([(size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F])
    return b"ID3\x03\x00\x00" + syncsafe + b"\x00" * n + mp3


def main():
    tmp = tempfile.mkdtemp(prefix="ebd-bench-")
    http_port, mqtt_port = free_port(), free_port()
    node = os.path.join(tmp, "node")
    keys = os.path.join(tmp, "keys")
    subprocess.run([sys.executable, os.path.join(ROOT, "tests/interop/ebd_platform.py"), "keys", keys],
                   check=True, capture_output=True)
    pw = os.path.join(tmp, "admin.pw")
    open(pw, "w").write(ADMIN + "\n")
    spk_pw = os.path.join(tmp, "speaker.pw")
    open(spk_pw, "w").write(SPEAKER_PW + "\n")
    subprocess.run([BIN, "init", "--data-dir", node, "--area", "330723001", "--name", "bench", "--role", "township",
                    "--admin-password-file", pw], check=True, capture_output=True, env=ENV)
    open(os.path.join(node, "township-node.toml"), "w").write(f'''
[mqtt]
listen = "127.0.0.1:{mqtt_port}"

[[pa.outputs]]
id = "amp"
kind = "modbus_relay"
port = "{NODE_PORT}"
baud = 9600
slave = 1
coil = 0
warmup = "500ms"

[[pa.outputs]]
id = "spk"
kind = "mqtt_speaker"
username = "spk"
password_file = "{spk_pw}"

[[pa.zones]]
id = "bench"
name = "bench"
area = "330723001001"
outputs = ["amp", "spk"]

[ebd]
ebrid = "{NODE_EBRID}"
ca_certs = ["{keys}/ca.cert"]
trusted_certs = ["{keys}/platform.cert"]
''')
    debug = os.environ.get("BENCH_DEBUG")
    procs = [subprocess.Popen([BIN, "serve", "--data-dir", node, "--listen", f"127.0.0.1:{http_port}"],
                              stdout=None if debug else subprocess.DEVNULL,
                              stderr=None if debug else subprocess.DEVNULL, env=ENV)]
    events = os.path.join(tmp, "speaker.events")
    try:
        wait_port(http_port)
        wait_port(mqtt_port)
        procs.append(subprocess.Popen(
            ["python3", os.path.join(ROOT, "tests/interop/pa_speaker.py"), "--id", "spk", "--port", str(mqtt_port),
             "--username", "spk", "--password-file", spk_pw, "--http", f"http://127.0.0.1:{http_port}",
             "--speed", "0.01", "--heartbeat", "5", "--events", events],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        mp3 = make_mp3(tmp)
        signer = platform.Signer.load(keys)
        url = f"http://127.0.0.1:{http_port}/ebd/receive"
        node_pub = platform.read_cert_pubkey(os.path.join(node, "ebd/node.cert"))
        print(f"MP3: {len(mp3)} bytes")

        def package(i):
            return platform.make_ebm_package(
                signer, mp3=with_padding(mp3, 16 + i), digest=True, severity="1", area="330723001000",
                dest=NODE_EBRID, start=platform.now8(-1), end=platform.now8(600))

        # A warm-up order (the speaker's first connection, the node's first audio fetch).
        wait("the speaker", lambda: os.path.exists(events) or time.sleep(0.2), timeout=30)
        time.sleep(1)
        relay, audio, http_ms = [], [], []
        for i in range(PACKAGES + 1):
            pkg = package(i)
            coils_before = len(coil_writes())
            audio_before = len(first_audio_bytes(events))
            res = platform.post_package(url, pkg.tar, f"EBDT_{pkg.ebdid}.tar")
            t0 = res.t_post_ns
            receipt = platform.verify_package(res.body, node_pub)
            code = receipt.get("body", {}).get("ResultCode")
            if res.status != 200 or code != "1" or not receipt.get("verified"):
                raise SystemExit(f"package {i}: HTTP {res.status}, ResultCode {code}, {receipt.get('error')}")
            on = wait("the relay", lambda: [w for w in coil_writes()[coils_before:] if w[0]])
            first = wait("the first audio byte", lambda: first_audio_bytes(events)[audio_before:])
            wait("the relay off", lambda: [w for w in coil_writes()[coils_before:] if not w[0]])
            if i == 0:
                continue
            relay.append((on[0][1] - t0) / 1e6)
            audio.append((first[0] - t0) / 1e6)
            http_ms.append(res.elapsed_ms)
            if debug and i % 10 == 0:
                print(f"package {i}: relay {relay[-1]:.1f} ms, audio {audio[-1]:.1f} ms", file=sys.stderr)
        print(f"POST -> receipt (HTTP round trip, {len(http_ms)} packages of {len(pkg.tar)} bytes): "
              f"p50 {pct(http_ms, .5):.1f} ms, p99 {pct(http_ms, .99):.1f} ms")
        print(f"POST -> relay on: p50 {pct(relay, .5):.1f} ms, p99 {pct(relay, .99):.1f} ms")
        print(f"POST -> first audio byte at the speaker: p50 {pct(audio, .5):.1f} ms, p99 {pct(audio, .99):.1f} ms "
              f"(includes the relay's 500 ms warm-up)")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()

    # The peer's verification speed on the same package (one core: Python is single-threaded).
    d = os.path.join(ROOT, "tests/conformance/ebd")
    ebdb = open(os.path.join(d, "01_EBM_play_2017JS_EBDB_100102320000000000010000000000097264.xml"), "rb").read()
    ebds = open(os.path.join(d, "02_EBM_play_2017JS_EBDS_EBDB_100102320000000000010000000000097264.xml"), "rb").read().decode()
    value = ebds.split("<SignatureValue>")[1].split("<")[0]
    c, _sn, sig = platform.parse_signature_value(value)
    pub = platform.Cert.parse(open(os.path.join(d, "05_cert_JS_platform_SN00000000090d.cert"), "rb").read()).pub_xy_hex
    msg = ebdb + c.to_bytes(4, "big")
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < 3:
        assert platform.sm2_verify(pub, sig, msg)
        n += 1
    secs = time.perf_counter() - start
    print(f"peer (gmssl {platform.__name__}) SM2 verification of the Jiangsu package: {n} in {secs:.2f} s = {n / secs:.1f}/s")


if __name__ == "__main__":
    main()
