"""Peak memory of the node answering 16 concurrent thumbnail requests per kind of file; called by
thumbnails.sh with the release binary and the directory of files from examples/thumb_files."""
import concurrent.futures, json, os, socket, subprocess, sys, tempfile, time, urllib.request, uuid

BIN, FILES = sys.argv[1], sys.argv[2]
PEER = os.environ.get("PEER_BIN")
ENV = {k: v for k, v in os.environ.items() if not k.startswith("TOWNSHIP_")} | {"RUST_LOG": "warn", "TOWNSHIP_HTTP__HTTPS_LISTEN": "127.0.0.1:0"}
KINDS = [("lying", "639-byte JPEG claiming 7,000 x 7,000"), ("bomb", "PNG bomb, 7,000 x 7,000 of zeros"),
         ("flat", "real one-colour JPEG, 7,000 x 7,000"), ("photo", "phone photo JPEG, 4,000 x 3,000")]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_kib(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def request(base, method, path, token, body=None, content_type=None):
    req = urllib.request.Request(base + path, data=body, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def upload(base, token, incident, path):
    boundary = uuid.uuid4().hex
    data = open(path, "rb").read()
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    status, out = request(base, "POST", f"/api/v1/incidents/{incident}/attachments", token, body,
                          f"multipart/form-data; boundary={boundary}")
    if status != 201:
        raise SystemExit(f"upload of {path} failed: {status} {out[:200]!r}")
    return json.loads(out)["sha256"]


def measure(binary, label):
    with tempfile.TemporaryDirectory() as tmp:
        node, pw = f"{tmp}/node", f"{tmp}/pw"
        open(pw, "w").write("Bench-Pass-2026\n")
        subprocess.run([binary, "init", "--data-dir", node, "--area", "330723001", "--name", "bench", "--role", "township",
                        "--admin-password-file", pw], check=True, stdout=subprocess.DEVNULL, env=ENV)
        token = subprocess.run([binary, "token", "create", "--data-dir", node, "--user", "admin", "--name", "bench"],
                               check=True, capture_output=True, text=True, env=ENV).stdout.strip()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen([binary, "serve", "--data-dir", node, "--listen", f"127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        try:
            for _ in range(500):
                try:
                    urllib.request.urlopen(f"{base}/readyz", timeout=1)
                    break
                except Exception:
                    time.sleep(0.02)
            body = json.dumps({"category": "其他", "title": "bench", "area": "330723001001"}).encode()
            status, out = request(base, "POST", "/api/v1/incidents", token, body, "application/json")
            incident = json.loads(out)["id"]
            shas = {kind: [upload(base, token, incident, f"{FILES}/{kind}-{i:02}.{'png' if kind == 'bomb' else 'jpg'}")
                           for i in range(16)] for kind, _ in KINDS}
            time.sleep(1)
            print(f"{label}: resident memory before the requests: {status_kib(proc.pid, 'VmRSS') / 1024:.1f} MiB")
            peaks = {}
            for kind, what in KINDS:
                # Reset the peak (Linux: writing 5 to clear_refs), then 16 requests at once.
                with open(f"/proc/{proc.pid}/clear_refs", "w") as f:
                    f.write("5")
                began = time.perf_counter()
                with concurrent.futures.ThreadPoolExecutor(16) as pool:
                    answers = list(pool.map(
                        lambda sha: request(base, "GET", f"/api/v1/blobs/{sha}/thumbnail", token)[0], shas[kind]))
                took = time.perf_counter() - began
                alive = proc.poll() is None
                peak = status_kib(proc.pid, "VmHWM") / 1024 if alive else float("nan")
                peaks[kind] = peak
                counts = {s: answers.count(s) for s in sorted(set(answers))}
                print(f"{label}: {what}: peak resident {peak:.1f} MiB over 16 concurrent thumbnail requests "
                      f"({took:.2f} s; answers {counts}){'' if alive else ' -- THE NODE DIED'}")
                if not alive:
                    break
            return peaks
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)


ours = measure(BIN, "this build")
if PEER:
    theirs = measure(PEER, "peer build")
    for kind, what in KINDS:
        if kind in theirs and kind in ours:
            print(f"{what}: this build's peak is {ours[kind] / theirs[kind]:.2f} of the peer's")
