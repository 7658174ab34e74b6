"""The peer pipeline for the ingest benchmark: a paho-mqtt subscriber on mosquitto that parses each
JSON reading and commits to SQLite the way the node does (WAL, synchronous=FULL, the same raw table
keyed (series, t), duplicates ignored, batches of up to 5,000 rows: whatever arrived while the
previous commit ran).

Usage: peer_ingest.py PORT DB EXPECTED   prints one JSON line once EXPECTED readings are committed.
"""
import json, queue, sqlite3, sys, threading, time

import paho.mqtt.client as mqtt

PORT, DB, EXPECTED = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
BATCH_MAX, BATCH_DELAY = 5000, 0.0
rows = queue.Queue()
first = [None]


def on_connect(client, userdata, flags, reason_code, properties=None):
    client.subscribe("sensors/+", qos=1)


def on_subscribe(client, userdata, mid, reason_codes, properties=None):
    print("ready", flush=True)


def on_message(client, userdata, msg):
    if first[0] is None:
        first[0] = time.monotonic()
    device = msg.topic.split("/")[1]
    body = json.loads(msg.payload)
    ts = body.pop("ts")
    for metric, value in body.items():
        rows.put((device, metric, ts, float(value)))


def writer():
    db = sqlite3.connect(DB, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS series (id INTEGER PRIMARY KEY, device TEXT, metric TEXT, UNIQUE (device, metric))")
    db.execute("CREATE TABLE IF NOT EXISTS raw (series INTEGER, t INTEGER, value REAL, quality INTEGER, PRIMARY KEY (series, t)) WITHOUT ROWID")
    series = {}
    committed = 0
    while committed < EXPECTED:
        batch = [rows.get()]
        deadline = time.monotonic() + BATCH_DELAY
        while len(batch) < BATCH_MAX:
            left = deadline - time.monotonic()
            try:
                batch.append(rows.get(timeout=max(left, 0)) if left > 0 else rows.get_nowait())
            except queue.Empty:
                break
        db.execute("BEGIN")
        for device, metric, ts, value in batch:
            sid = series.get((device, metric))
            if sid is None:
                db.execute("INSERT OR IGNORE INTO series (device, metric) VALUES (?, ?)", (device, metric))
                sid = db.execute("SELECT id FROM series WHERE device = ? AND metric = ?", (device, metric)).fetchone()[0]
                series[(device, metric)] = sid
            db.execute("INSERT OR IGNORE INTO raw VALUES (?, ?, ?, 0)", (sid, ts, value))
        db.execute("COMMIT")
        committed += len(batch)
    seconds = time.monotonic() - first[0]
    print(json.dumps({"readings": committed, "seconds": round(seconds, 3), "per_second": round(committed / seconds)}), flush=True)


client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="peer-ingest", clean_session=True)
client.on_connect = on_connect
client.on_message = on_message
client.on_subscribe = on_subscribe
client.connect("127.0.0.1", PORT)
done = threading.Thread(target=writer)
done.start()
client.loop_start()
done.join()
client.loop_stop()
