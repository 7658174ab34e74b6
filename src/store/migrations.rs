//! Embedded, numbered schema migrations tracked by `PRAGMA user_version`.
//!
//! One function per version, each applied in its own transaction together with the version bump, so
//! a crash mid-upgrade leaves the database at the last complete version. A database whose version is
//! newer than [`LATEST`] was written by a newer binary and is refused rather than guessed at.

use std::path::Path;

use rusqlite::{Connection, Transaction};

use super::StoreError;

type Migration = fn(&Transaction<'_>) -> rusqlite::Result<()>;

/// Index `i` upgrades the schema from version `i` to version `i + 1`.
const MIGRATIONS: &[Migration] = &[
    v1_node_meta,
    v2_record_store,
    v3_accounts,
    v4_audit,
    v5_incidents,
    v6_sync_peers,
    v7_streams,
    v8_telemetry,
    v9_authority,
    v10_rules,
    v11_warnings,
    v12_cap_inbound,
    v13_warning_events,
    v14_broadcasts,
    v15_idempotency,
    v16_uploads,
    v17_area_names,
    v18_incident_duplicates,
    v19_audit_chains,
    v20_readings_upstream,
    v21_deferred_search_index,
    v22_emergency_broadcast_packages,
    v23_search_index_noted_by_the_projection,
];

/// The schema version this binary writes.
pub const LATEST: i64 = MIGRATIONS.len() as i64;

fn v1_node_meta(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    // The node's identity and settings fixed at init: node id, public key, area, name, role.
    tx.execute_batch(
        "CREATE TABLE node_meta (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) STRICT;",
    )
}

fn v2_record_store(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(township_sync::docstore::SCHEMA)?;
    // The per-database salt behind the automerge actor id: a restored copy gets a new one.
    let mut salt = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt).map_err(|_| {
        rusqlite::Error::InvalidParameterName("the system random source failed".into())
    })?;
    tx.execute(
        "INSERT OR IGNORE INTO node_meta (key, value) VALUES ('db_salt', ?1)",
        [hex::encode(salt)],
    )?;
    Ok(())
}

fn v3_accounts(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "
        -- Projection of `user` records. Keyed by record: two records may claim one username after a
        -- partition; lookups then pick the oldest record deterministically.
        CREATE TABLE users (
            doc_id        TEXT PRIMARY KEY,
            username      TEXT NOT NULL,
            display_name  TEXT NOT NULL,
            phone         TEXT,
            role          TEXT NOT NULL,
            area          TEXT NOT NULL,
            department    TEXT,
            disabled      INTEGER NOT NULL,
            password_hash TEXT NOT NULL,
            created_by    TEXT NOT NULL,
            updated_ms    INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX users_by_username ON users(username, doc_id);
        CREATE INDEX users_by_area ON users(area);
        -- The break-glass admin of this box: never a record, never synced.
        CREATE TABLE local_accounts (
            username      TEXT PRIMARY KEY,
            display_name  TEXT NOT NULL,
            role          TEXT NOT NULL,
            area          TEXT NOT NULL,
            password_hash TEXT NOT NULL,
            disabled      INTEGER NOT NULL DEFAULT 0,
            created_ms    INTEGER NOT NULL
        ) STRICT;
        CREATE TABLE sessions (
            token_hash   TEXT PRIMARY KEY,
            username     TEXT NOT NULL,
            csrf_token   TEXT NOT NULL,
            created_ms   INTEGER NOT NULL,
            last_seen_ms INTEGER NOT NULL,
            client       TEXT NOT NULL
        ) STRICT;
        CREATE INDEX sessions_by_user ON sessions(username);
        CREATE TABLE api_tokens (
            id           TEXT PRIMARY KEY,
            token_hash   TEXT NOT NULL UNIQUE,
            username     TEXT NOT NULL,
            name         TEXT NOT NULL,
            created_ms   INTEGER NOT NULL,
            last_used_ms INTEGER,
            revoked_ms   INTEGER
        ) STRICT;
        ",
    )
}

/// The audit chain's tables; also used by tests that check the chain on its own.
pub const AUDIT_SCHEMA: &str = "
    CREATE TABLE audit_log (
        seq       INTEGER PRIMARY KEY,
        at_ms     INTEGER NOT NULL,
        actor     TEXT NOT NULL,
        action    TEXT NOT NULL,
        target    TEXT NOT NULL,
        detail    TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash      TEXT NOT NULL
    ) STRICT;
    CREATE INDEX audit_by_actor ON audit_log(actor, seq);
    CREATE INDEX audit_by_action ON audit_log(action, seq);
    CREATE INDEX audit_by_target ON audit_log(target, seq);
    CREATE INDEX audit_by_time ON audit_log(at_ms);
    CREATE TABLE audit_checkpoints (
        seq        INTEGER PRIMARY KEY,
        hash       TEXT NOT NULL,
        signature  TEXT NOT NULL,
        public_key TEXT NOT NULL,
        at_ms      INTEGER NOT NULL
    ) STRICT;
";

fn v4_audit(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(AUDIT_SCHEMA)
}

fn v5_incidents(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "
        -- Projection of `incident` records. `row` gives the full-text index an integer key.
        CREATE TABLE incidents (
            row                INTEGER PRIMARY KEY,
            id                 TEXT NOT NULL UNIQUE,
            area               TEXT NOT NULL,
            category           TEXT NOT NULL,
            title              TEXT NOT NULL,
            description        TEXT NOT NULL,
            state              TEXT NOT NULL,
            reporter           TEXT NOT NULL,
            lead_department    TEXT,
            -- ',water,housing,' so one LIKE finds a department anywhere in the list
            assist_departments TEXT NOT NULL,
            assignee           TEXT,
            lat                REAL,
            lon                REAL,
            place              TEXT,
            escalated          INTEGER NOT NULL,
            created_ms         INTEGER NOT NULL,
            updated_ms         INTEGER NOT NULL,
            accepted_ms        INTEGER,
            dispatched_ms      INTEGER,
            resolved_ms        INTEGER,
            closed_ms          INTEGER,
            rejected_ms        INTEGER,
            due_start_ms       INTEGER,
            due_ms             INTEGER,
            due_kind           TEXT,
            due_state          TEXT NOT NULL,
            on_time            INTEGER,
            rating             INTEGER,
            conflicts          INTEGER NOT NULL
        ) STRICT;
        -- Every list is newest first by (created_ms, id); indexes end in both so the first page is read
        -- straight off the index instead of sorting every match.
        CREATE INDEX incidents_by_created ON incidents(created_ms DESC, id DESC);
        CREATE INDEX incidents_by_state ON incidents(state, created_ms DESC, id DESC);
        CREATE INDEX incidents_by_category ON incidents(category, created_ms DESC, id DESC);
        CREATE INDEX incidents_by_lead ON incidents(lead_department, created_ms DESC, id DESC);
        CREATE INDEX incidents_by_due ON incidents(due_state, created_ms DESC, id DESC);
        CREATE INDEX incidents_by_reporter ON incidents(reporter, created_ms DESC, id DESC);
        -- Trigram tokens make substring search work for Chinese, which has no spaces between words.
        CREATE VIRTUAL TABLE incidents_fts USING fts5(
            title, description, content='incidents', content_rowid='row', tokenize='trigram'
        );
        CREATE TRIGGER incidents_fts_insert AFTER INSERT ON incidents BEGIN
            INSERT INTO incidents_fts (rowid, title, description) VALUES (new.row, new.title, new.description);
        END;
        CREATE TRIGGER incidents_fts_delete AFTER DELETE ON incidents BEGIN
            INSERT INTO incidents_fts (incidents_fts, rowid, title, description) VALUES ('delete', old.row, old.title, old.description);
        END;
        CREATE TRIGGER incidents_fts_update AFTER UPDATE OF title, description ON incidents BEGIN
            INSERT INTO incidents_fts (incidents_fts, rowid, title, description) VALUES ('delete', old.row, old.title, old.description);
            INSERT INTO incidents_fts (rowid, title, description) VALUES (new.row, new.title, new.description);
        END;
        CREATE TABLE incident_attachments (
            incident_id TEXT NOT NULL,
            sha256      TEXT NOT NULL,
            PRIMARY KEY (incident_id, sha256)
        ) STRICT;
        CREATE INDEX incident_attachments_by_blob ON incident_attachments(sha256);
        -- Blobs stored on disk under the data directory, by SHA-256.
        CREATE TABLE blobs (
            sha256       TEXT PRIMARY KEY,
            size         INTEGER NOT NULL,
            content_type TEXT NOT NULL,
            created_ms   INTEGER NOT NULL
        ) STRICT;
        ",
    )
}

fn v6_sync_peers(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "
        -- Nodes this node syncs with: enrolled downstream nodes and its upstream. acked_seq is our
        -- sequence number up to which the peer confirmed holding our records.
        CREATE TABLE sync_peers (
            node_id      TEXT PRIMARY KEY,
            public_key   TEXT NOT NULL UNIQUE,
            area         TEXT NOT NULL,
            name         TEXT NOT NULL,
            relation     TEXT NOT NULL CHECK (relation IN ('upstream', 'downstream')),
            enrolled_ms  INTEGER NOT NULL,
            revoked_ms   INTEGER,
            acked_seq    INTEGER NOT NULL DEFAULT 0,
            last_seen_ms INTEGER,
            version      TEXT,
            last_error   TEXT
        ) STRICT;
        ",
    )
}

fn v7_streams(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "
        -- Append-only stream records received from downstream nodes (their audit chains, and later
        -- readings and receipts), kept by origin and sequence so a replay changes nothing.
        CREATE TABLE stream_records (
            origin      TEXT NOT NULL,
            stream      TEXT NOT NULL,
            seq         INTEGER NOT NULL,
            payload     BLOB NOT NULL,
            via         TEXT NOT NULL,
            received_ms INTEGER NOT NULL,
            PRIMARY KEY (origin, stream, seq)
        ) STRICT;
        -- How far each peer has confirmed each origin's stream.
        CREATE TABLE stream_cursors (
            peer   TEXT NOT NULL,
            origin TEXT NOT NULL,
            stream TEXT NOT NULL,
            acked  INTEGER NOT NULL,
            PRIMARY KEY (peer, origin, stream)
        ) STRICT;
        ",
    )
}

fn v8_telemetry(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "
        -- One row per (device, metric) ever seen, so readings carry a small integer, not two strings.
        CREATE TABLE telemetry_series (
            id     INTEGER PRIMARY KEY,
            device TEXT NOT NULL,
            metric TEXT NOT NULL,
            unit   TEXT,
            UNIQUE (device, metric)
        ) STRICT;
        -- Raw readings, append-only. The key makes a replayed reading (same series and time) a no-op.
        -- quality: 0 good, 1 out of range, 2 clock corrected, 3 flagged by the device.
        CREATE TABLE telemetry_raw (
            series  INTEGER NOT NULL REFERENCES telemetry_series (id),
            t       INTEGER NOT NULL,
            value   REAL NOT NULL,
            quality INTEGER NOT NULL,
            PRIMARY KEY (series, t)
        ) STRICT, WITHOUT ROWID;
        -- Aggregates kept after raw readings are pruned: per minute and per hour.
        CREATE TABLE telemetry_minute (
            series INTEGER NOT NULL REFERENCES telemetry_series (id),
            bucket INTEGER NOT NULL,
            min    REAL NOT NULL,
            max    REAL NOT NULL,
            sum    REAL NOT NULL,
            count  INTEGER NOT NULL,
            PRIMARY KEY (series, bucket)
        ) STRICT, WITHOUT ROWID;
        CREATE TABLE telemetry_hour (
            series INTEGER NOT NULL REFERENCES telemetry_series (id),
            bucket INTEGER NOT NULL,
            min    REAL NOT NULL,
            max    REAL NOT NULL,
            sum    REAL NOT NULL,
            count  INTEGER NOT NULL,
            PRIMARY KEY (series, bucket)
        ) STRICT, WITHOUT ROWID;
        ",
    )
}

/// A node_meta key set by migrations whose new projection columns need the documents re-read; the
/// node rebuilds its projections at the next start and clears it.
pub const PROJECTIONS_STALE: &str = "projections_stale";

/// Author claims and what they bound: per-record verdicts (quarantine), the account preferred under
/// a clashing username (rank and local arrival), the record scope beside each account, sessions and
/// tokens bound to one account record, and per-person upload use for the daily quota.
fn v9_authority(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "
        ALTER TABLE users ADD COLUMN scope TEXT NOT NULL DEFAULT '';
        ALTER TABLE users ADD COLUMN rank INTEGER NOT NULL DEFAULT 12;
        ALTER TABLE users ADD COLUMN quarantine TEXT;
        CREATE TABLE account_arrivals (
            doc_id      TEXT PRIMARY KEY,
            arrived_seq INTEGER NOT NULL
        ) STRICT;
        INSERT INTO account_arrivals (doc_id, arrived_seq)
            SELECT id, seq FROM documents WHERE kind = 'user';
        CREATE TABLE record_verdicts (
            doc_id   TEXT PRIMARY KEY,
            kind     TEXT NOT NULL,
            reason   TEXT NOT NULL,
            since_ms INTEGER NOT NULL
        ) STRICT;
        -- Sessions from before are bound to no account record: everyone signs in again once.
        DELETE FROM sessions;
        ALTER TABLE sessions ADD COLUMN account TEXT NOT NULL DEFAULT '';
        ALTER TABLE api_tokens ADD COLUMN account TEXT NOT NULL DEFAULT '';
        UPDATE api_tokens SET account = COALESCE(
            (SELECT 'local' FROM local_accounts l WHERE l.username = api_tokens.username),
            (SELECT doc_id FROM users u WHERE u.username = api_tokens.username ORDER BY doc_id LIMIT 1),
            '');
        CREATE TABLE upload_use (
            username TEXT NOT NULL,
            day      INTEGER NOT NULL,
            bytes    INTEGER NOT NULL,
            PRIMARY KEY (username, day)
        ) STRICT;
        ",
    )?;
    // Heads are signed from now on; the node may sign the one unsigned head it finds, once, at the
    // next start (see `audit::sign_head_if_unsigned`).
    tx.execute(
        "INSERT INTO node_meta (key, value) VALUES ('audit_head_unsigned_ok', '1')
         ON CONFLICT(key) DO NOTHING",
        [],
    )?;
    // Only a database with records needs them re-read (a fresh one has none).
    tx.execute(
        "INSERT INTO node_meta (key, value) SELECT ?1, '9' WHERE EXISTS (SELECT 1 FROM documents)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [PROJECTIONS_STALE],
    )?;
    Ok(())
}

/// Rules on readings (the `rule` records' projection).
fn v10_rules(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE rules (
            doc_id     TEXT PRIMARY KEY,
            area       TEXT NOT NULL,
            body       TEXT NOT NULL,
            created_by TEXT NOT NULL,
            deleted    INTEGER NOT NULL,
            updated_ms INTEGER NOT NULL,
            quarantine TEXT
        ) STRICT;
        CREATE INDEX rules_area ON rules (area);",
    )
}

/// Warnings (the `warning` records' projection).
fn v11_warnings(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE warnings (
            doc_id     TEXT PRIMARY KEY,
            area       TEXT NOT NULL,
            level      TEXT,
            state      TEXT NOT NULL,
            status     TEXT NOT NULL,
            event      TEXT NOT NULL,
            headline   TEXT NOT NULL,
            rule_id    TEXT,
            onset_ms   INTEGER,
            expires_ms INTEGER,
            issued_ms  INTEGER,
            updated_ms INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX warnings_rule ON warnings (rule_id, state);
        CREATE INDEX warnings_open ON warnings (state, expires_ms);",
    )
}

/// CAP alerts received, so a duplicate is a no-op and an Update or Cancel finds its warning.
fn v12_cap_inbound(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE cap_inbound (
            sender      TEXT NOT NULL,
            identifier  TEXT NOT NULL,
            warning_id  TEXT NOT NULL,
            msg_type    TEXT NOT NULL,
            received_ms INTEGER NOT NULL,
            PRIMARY KEY (sender, identifier)
        ) STRICT;",
    )
}

/// Which warning transitions have gone out as in-process events (see `warnings::events`). A node
/// that already holds warnings when it upgrades marks them as told once, at its first start, instead
/// of announcing its whole history to the loudspeakers.
fn v13_warning_events(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE warning_notified (
            doc_id        TEXT NOT NULL,
            transition_id TEXT NOT NULL,
            PRIMARY KEY (doc_id, transition_id)
        ) STRICT;
        INSERT INTO node_meta (key, value)
            SELECT 'warning_events_seed', '1' WHERE EXISTS (SELECT 1 FROM warnings);",
    )
}

/// Broadcasts and their receipts (projections), and what this node did with each broadcast
/// (`pa_plays`, never synced): whether it played or refused it, so a restart neither plays a
/// finished broadcast again nor audits a refusal twice.
fn v14_broadcasts(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE broadcasts (
            doc_id     TEXT PRIMARY KEY,
            area       TEXT NOT NULL,
            state      TEXT NOT NULL,
            mode       TEXT NOT NULL,
            level      TEXT NOT NULL,
            zones      TEXT NOT NULL,
            text       TEXT NOT NULL,
            requester  TEXT,
            warning_id TEXT,
            corrects   TEXT,
            rule_id    TEXT,
            audio      TEXT,
            start_ms   INTEGER NOT NULL,
            updated_ms INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX broadcasts_state ON broadcasts (state, updated_ms);
        CREATE INDEX broadcasts_warning ON broadcasts (warning_id);
        CREATE TABLE broadcast_receipt_docs (
            doc_id       TEXT PRIMARY KEY,
            broadcast_id TEXT NOT NULL,
            area         TEXT NOT NULL
        ) STRICT;
        CREATE INDEX broadcast_receipt_docs_by ON broadcast_receipt_docs (broadcast_id, area);
        CREATE TABLE broadcast_receipts (
            doc_id        TEXT NOT NULL,
            transition_id TEXT NOT NULL,
            broadcast_id  TEXT NOT NULL,
            node_area     TEXT NOT NULL,
            zone          TEXT NOT NULL,
            output        TEXT NOT NULL,
            state         TEXT NOT NULL,
            detail        TEXT NOT NULL,
            at_ms         INTEGER NOT NULL,
            PRIMARY KEY (doc_id, transition_id)
        ) STRICT;
        CREATE INDEX broadcast_receipts_by ON broadcast_receipts (broadcast_id, at_ms);
        CREATE TABLE pa_plays (
            broadcast_id TEXT PRIMARY KEY,
            outcome      TEXT NOT NULL,
            detail       TEXT NOT NULL,
            at_ms        INTEGER NOT NULL
        ) STRICT;",
    )
}

/// Answers kept for `Idempotency-Key` retries (see `http::idempotency`), per person and key, for a
/// day. `status` is NULL while the first request runs.
fn v15_idempotency(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE idempotency (
            username     TEXT NOT NULL,
            key          TEXT NOT NULL,
            fingerprint  TEXT NOT NULL,
            status       INTEGER,
            content_type TEXT,
            body         BLOB,
            created_ms   INTEGER NOT NULL,
            PRIMARY KEY (username, key)
        ) STRICT;
        CREATE INDEX idempotency_age ON idempotency (created_ms);",
    )
}

/// Resumable uploads (see `uploads`): per upload its owner, declared length and SHA-256, and the
/// offset acknowledged so far.
fn v16_uploads(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE uploads (
            id           TEXT PRIMARY KEY,
            username     TEXT NOT NULL,
            length       INTEGER NOT NULL,
            offset       INTEGER NOT NULL,
            sha256       TEXT NOT NULL,
            filename     TEXT NOT NULL,
            content_type TEXT,
            complete     INTEGER NOT NULL,
            created_ms   INTEGER NOT NULL,
            updated_ms   INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX uploads_owner ON uploads (username, complete);
        CREATE INDEX uploads_age ON uploads (updated_ms);",
    )
}

/// The area directory's projection (see `areas`): one row per `area` record with its verdict.
fn v17_area_names(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE area_names (
            doc_id     TEXT PRIMARY KEY,
            code       TEXT NOT NULL,
            name       TEXT NOT NULL,
            updated_ms INTEGER NOT NULL,
            quarantine TEXT
        ) STRICT;
        CREATE INDEX area_names_code ON area_names (code);",
    )
}

/// Incidents closed as duplicates name their original, so the original lists them.
fn v18_incident_duplicates(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "ALTER TABLE incidents ADD COLUMN duplicate_of TEXT;
        CREATE INDEX incidents_duplicate_of ON incidents (duplicate_of) WHERE duplicate_of IS NOT NULL;",
    )
}

/// How far each audit chain relayed from below has been checked, and where it broke
/// (see `audit::relayed`).
fn v19_audit_chains(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE audit_chains (
            origin       TEXT PRIMARY KEY,
            verified_seq INTEGER NOT NULL,
            last_hash    TEXT NOT NULL,
            signed_seq   INTEGER NOT NULL,
            public_key   TEXT,
            broken_seq   INTEGER,
            problem      TEXT,
            checked_ms   INTEGER NOT NULL
        ) STRICT;",
    )
}

/// Readings and link reports up the tree (see `telemetry::outbox`, `telemetry::tree` and
/// `sync::links`). This node's minute aggregates get a sequence number from one counter, bumped on
/// every write, so a stream cursor finds what changed since; raw readings to ship are queued under
/// numbers from the same counter, and station descriptions and link reports get theirs from it too.
/// Readings from below land in their own tables, keyed by origin so one village's `rain-01` is not
/// another's. Minute rows already stored are numbered now, so a node that upgrades ships its history;
/// raw readings from before the upgrade stay local.
fn v20_readings_upstream(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "ALTER TABLE telemetry_minute ADD COLUMN seq INTEGER;
        UPDATE telemetry_minute SET seq = m.n FROM (
            SELECT series, bucket, row_number() OVER (ORDER BY bucket, series) AS n FROM telemetry_minute
        ) AS m WHERE m.series = telemetry_minute.series AND m.bucket = telemetry_minute.bucket;
        CREATE INDEX telemetry_minute_seq ON telemetry_minute (seq) WHERE seq IS NOT NULL;
        CREATE TABLE outbox_seq (
            id   INTEGER PRIMARY KEY CHECK (id = 1),
            last INTEGER NOT NULL
        ) STRICT;
        INSERT INTO outbox_seq (id, last) SELECT 1, count(*) FROM telemetry_minute;
        -- Raw readings waiting to go up (only on a node with an upstream, and only until the
        -- upstream confirms them or they leave the raw window): a queue, not a column on every
        -- reading, so the readings table stays as small and fast as before.
        CREATE TABLE raw_outbox (
            seq    INTEGER PRIMARY KEY,
            series INTEGER NOT NULL,
            t      INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX raw_outbox_t ON raw_outbox (t);
        -- What this node says about its own stations, as last shipped.
        CREATE TABLE telemetry_stations (
            device  TEXT PRIMARY KEY,
            seq     INTEGER NOT NULL,
            payload BLOB NOT NULL
        ) STRICT;
        CREATE INDEX telemetry_stations_seq ON telemetry_stations (seq);
        -- Stations of nodes below, as their origin describes them; via is the child that sent it.
        CREATE TABLE tree_stations (
            origin      TEXT NOT NULL,
            device      TEXT NOT NULL,
            via         TEXT NOT NULL,
            area        TEXT NOT NULL,
            seq         INTEGER NOT NULL,
            payload     BLOB NOT NULL,
            received_ms INTEGER NOT NULL,
            PRIMARY KEY (origin, device)
        ) STRICT;
        CREATE TABLE tree_series (
            id             INTEGER PRIMARY KEY,
            origin         TEXT NOT NULL,
            device         TEXT NOT NULL,
            metric         TEXT NOT NULL,
            unit           TEXT,
            latest_t       INTEGER,
            latest_value   REAL,
            latest_quality INTEGER,
            UNIQUE (origin, device, metric)
        ) STRICT;
        -- A minute from below replaces the one held when its sequence number is higher: the origin
        -- sends the whole aggregate each time, so a minute re-sent after a late reading counts once.
        CREATE TABLE tree_minute (
            series INTEGER NOT NULL REFERENCES tree_series (id),
            bucket INTEGER NOT NULL,
            min    REAL NOT NULL,
            max    REAL NOT NULL,
            sum    REAL NOT NULL,
            count  INTEGER NOT NULL,
            seq    INTEGER NOT NULL,
            PRIMARY KEY (series, bucket)
        ) STRICT, WITHOUT ROWID;
        -- What this node says about the links of the nodes enrolled under it (`sync::links`), and
        -- what its children say about theirs.
        CREATE TABLE link_reports (
            node_id TEXT PRIMARY KEY,
            seq     INTEGER NOT NULL,
            payload BLOB NOT NULL
        ) STRICT;
        CREATE INDEX link_reports_seq ON link_reports (seq);
        CREATE TABLE tree_links (
            origin      TEXT NOT NULL,
            node_id     TEXT NOT NULL,
            via         TEXT NOT NULL,
            area        TEXT NOT NULL,
            seq         INTEGER NOT NULL,
            payload     BLOB NOT NULL,
            received_ms INTEGER NOT NULL,
            PRIMARY KEY (origin, node_id)
        ) STRICT;
        CREATE TABLE tree_raw (
            series  INTEGER NOT NULL REFERENCES tree_series (id),
            t       INTEGER NOT NULL,
            value   REAL NOT NULL,
            quality INTEGER NOT NULL,
            PRIMARY KEY (series, t)
        ) STRICT, WITHOUT ROWID;",
    )
}

/// The incidents' full-text index is brought up to date once per write transaction (see
/// `store::search_index`): the triggers only note which rows changed and what the index held.
fn v21_deferred_search_index(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE incidents_fts_pending (
            row         INTEGER PRIMARY KEY,
            -- 1: the index holds (title, description) below for this row, to be removed first
            indexed     INTEGER NOT NULL,
            title       TEXT,
            description TEXT
        ) STRICT;
        DROP TRIGGER incidents_fts_insert;
        DROP TRIGGER incidents_fts_delete;
        DROP TRIGGER incidents_fts_update;
        -- Only the first note of a row between flushes counts: it has what the index holds. (Not
        -- OR IGNORE: an upsert on incidents would override a trigger's conflict clause.)
        CREATE TRIGGER incidents_fts_insert AFTER INSERT ON incidents BEGIN
            INSERT INTO incidents_fts_pending (row, indexed)
            SELECT new.row, 0 WHERE NOT EXISTS (SELECT 1 FROM incidents_fts_pending WHERE row = new.row);
        END;
        CREATE TRIGGER incidents_fts_delete AFTER DELETE ON incidents BEGIN
            INSERT INTO incidents_fts_pending (row, indexed, title, description)
            SELECT old.row, 1, old.title, old.description
            WHERE NOT EXISTS (SELECT 1 FROM incidents_fts_pending WHERE row = old.row);
        END;
        CREATE TRIGGER incidents_fts_update AFTER UPDATE OF title, description ON incidents
        WHEN old.title IS NOT new.title OR old.description IS NOT new.description BEGIN
            INSERT INTO incidents_fts_pending (row, indexed, title, description)
            SELECT old.row, 1, old.title, old.description
            WHERE NOT EXISTS (SELECT 1 FROM incidents_fts_pending WHERE row = old.row);
        END;",
    )
}

/// The emergency-broadcast platform link (`ebd`): packages seen (replays are refused), the highest
/// signature counter per platform certificate, this node's own id and counter sequence, and the
/// platform orders it plays with the state last reported for each.
fn v22_emergency_broadcast_packages(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE ebd_seen (
            ebdid       TEXT PRIMARY KEY,
            ebd_type    TEXT NOT NULL,
            src_ebrid   TEXT NOT NULL,
            received_ms INTEGER NOT NULL
        ) STRICT, WITHOUT ROWID;
        CREATE TABLE ebd_counters (
            cert_sn      TEXT PRIMARY KEY,
            last_counter INTEGER NOT NULL,
            updated_ms   INTEGER NOT NULL
        ) STRICT, WITHOUT ROWID;
        -- One row: the last EBDID sequence number and signature counter this node used.
        CREATE TABLE ebd_sequence (
            id           INTEGER PRIMARY KEY CHECK (id = 1),
            last_seq     INTEGER NOT NULL,
            last_counter INTEGER NOT NULL
        ) STRICT;
        CREATE TABLE ebd_orders (
            ebm_id          TEXT PRIMARY KEY,
            ebdid           TEXT NOT NULL,
            broadcast_id    TEXT,
            msg_type        INTEGER NOT NULL,
            src_ebrid       TEXT NOT NULL,
            reply_url       TEXT,
            package_sha256  TEXT NOT NULL,
            title           TEXT NOT NULL,
            received_ms     INTEGER NOT NULL,
            -- The BrdStateCode last acknowledged by the platform, and what it was when it changed.
            reported_state  INTEGER,
            state           INTEGER NOT NULL,
            state_desc      TEXT NOT NULL,
            state_ms        INTEGER NOT NULL
        ) STRICT, WITHOUT ROWID;
        CREATE INDEX ebd_orders_unreported ON ebd_orders (state_ms) WHERE reported_state IS NOT state;
        CREATE INDEX ebd_orders_broadcast ON ebd_orders (broadcast_id);",
    )
}

/// The incidents projection notes its own inserts and title or description changes for the search
/// index (`store::search_index::note_inserted`, `note_changed`). A trigger on a table makes every
/// insert or update of it a multi-write statement, and SQLite then copies each page it touches into a
/// statement journal first: a sixth of the county's writer in a cold sync. Deletes are rare (a
/// projection rebuilt, a record forgotten) and keep their trigger.
fn v23_search_index_noted_by_the_projection(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "DROP TRIGGER incidents_fts_insert;
        DROP TRIGGER incidents_fts_update;",
    )
}

pub fn schema_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
}

pub fn check_not_newer(conn: &Connection, path: &Path) -> Result<i64, StoreError> {
    let found = schema_version(conn)?;
    if found > LATEST {
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported: LATEST,
            binary: env!("CARGO_PKG_VERSION"),
        });
    }
    Ok(found)
}

/// Brings the database up to [`LATEST`], one transaction per version.
pub fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let mut version = check_not_newer(conn, path)?;
    while version < LATEST {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let index = usize::try_from(version).map_err(|_| StoreError::Corrupt {
            what: "the database".into(),
            verdict: format!("negative schema version {version}"),
        })?;
        MIGRATIONS[index](&tx)?;
        version += 1;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
        tracing::info!(version, "database schema migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_a_fresh_database_to_latest_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let mut conn = Connection::open(&path).unwrap();
        migrate(&mut conn, &path).unwrap();
        assert_eq!(schema_version(&conn).unwrap(), LATEST);
        migrate(&mut conn, &path).unwrap();
        assert_eq!(schema_version(&conn).unwrap(), LATEST);
    }
}
