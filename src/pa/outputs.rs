//! The configured outputs as things that can be driven: relays (a coil on their line's Modbus
//! driver), IP speakers (commands through the embedded broker, reports back from it) and audio
//! commands, with each output's health as last seen, for `GET /api/v1/pa/zones` and the receipts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use serde::Serialize;
use township_drivers::modbus::{CoilCommand, CoilError};
use township_drivers::mqtt_broker::{Account, Format, SpeakerLink, SpeakerMessage};
use township_drivers::serial::Parity as SerialParity;

use super::command::CommandOutput;
use super::config::{Output, PaConfig, Zone};
use crate::telemetry::drivers::PaWiring;

/// How long a relay's write and read-back may take on the line, each.
const COIL_TIMEOUT: Duration = Duration::from_millis(500);
/// A speaker whose last heartbeat is older than this is shown as offline.
pub const HEARTBEAT_STALE_MS: i64 = 90_000;

/// A relay: its line's command queue and where it is.
#[derive(Clone)]
pub struct Relay {
    lines: tokio::sync::mpsc::Sender<CoilCommand>,
    pub slave: u8,
    pub coil: u16,
    pub warmup: Duration,
}

impl Relay {
    /// Switches the relay and waits until it reads back as switched.
    pub async fn switch(&self, on: bool) -> Result<(), String> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.lines
            .send(CoilCommand {
                slave: self.slave,
                coil: self.coil,
                on,
                timeout: COIL_TIMEOUT,
                reply,
            })
            .await
            .map_err(|_| "the line's driver is not running".to_string())?;
        // The line may be busy with a poll; its driver answers within a few timeouts.
        match tokio::time::timeout(Duration::from_secs(10), answer).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(coil_reason(&e)),
            Ok(Err(_)) => Err("the line's driver stopped".into()),
            Err(_) => Err("the line did not answer within 10 s".into()),
        }
    }
}

fn coil_reason(e: &CoilError) -> String {
    format!("relay: {e}")
}

/// One output as the engine drives it.
#[derive(Clone)]
pub enum Driven {
    Relay(Relay),
    Speaker,
    Command(CommandOutput),
}

/// How an output fared last.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Health {
    /// `ok`, `error`, `offline` or `unknown`.
    pub status: String,
    pub detail: String,
    pub at_ms: Option<i64>,
}

/// Every output and zone of this node.
pub struct Outputs {
    pub zones: Vec<Zone>,
    config: HashMap<String, Output>,
    driven: HashMap<String, Driven>,
    health: Mutex<HashMap<String, Health>>,
    /// Last heartbeat per speaker (milliseconds).
    heartbeats: Mutex<HashMap<String, i64>>,
    pub speakers: Option<Arc<SpeakerLink>>,
}

impl Outputs {
    /// Builds the outputs from `[pa]`, and what the drivers must serve for them. A speaker whose
    /// password file cannot be read is kept (shown with the error) but cannot sign in.
    pub fn wire(pa: &PaConfig) -> (Outputs, PaWiring) {
        let mut driven = HashMap::new();
        let mut health = HashMap::new();
        let mut lines: HashMap<
            String,
            (u32, SerialParity, tokio::sync::mpsc::Sender<CoilCommand>),
        > = HashMap::new();
        let mut wiring = PaWiring::default();
        let mut speaker_accounts = HashMap::new();
        for output in &pa.outputs {
            let id = output.id().to_string();
            match output {
                Output::ModbusRelay(r) => {
                    let sender = match lines.get(&r.port) {
                        Some((_, _, s)) => s.clone(),
                        None => {
                            let (tx, rx) = tokio::sync::mpsc::channel(16);
                            let parity = match r.parity.as_str() {
                                "even" => SerialParity::Even,
                                "odd" => SerialParity::Odd,
                                _ => SerialParity::None,
                            };
                            wiring.coil_lines.push((r.port.clone(), r.baud, parity, rx));
                            lines.insert(r.port.clone(), (r.baud, parity, tx.clone()));
                            tx
                        }
                    };
                    driven.insert(
                        id.clone(),
                        Driven::Relay(Relay {
                            lines: sender,
                            slave: r.slave,
                            coil: r.coil,
                            warmup: r.warmup,
                        }),
                    );
                }
                Output::MqttSpeaker(s) => {
                    match std::fs::read_to_string(&s.password_file) {
                        Ok(p) if !p.trim().is_empty() => {
                            speaker_accounts.insert(
                                s.username.clone(),
                                Account {
                                    device: s.id.clone(),
                                    password: p.trim().to_string(),
                                    format: Format::Json,
                                    speaker: true,
                                },
                            );
                        }
                        Ok(_) | Err(_) => {
                            tracing::warn!(speaker = %s.id, file = %s.password_file.display(), "the speaker's password file cannot be read; it cannot sign in");
                            health.insert(
                                id.clone(),
                                Health {
                                    status: "error".into(),
                                    detail: "password file unreadable".into(),
                                    at_ms: None,
                                },
                            );
                        }
                    }
                    driven.insert(id.clone(), Driven::Speaker);
                }
                Output::AudioCommand(c) => {
                    driven.insert(
                        id.clone(),
                        Driven::Command(CommandOutput::new(c.command.clone())),
                    );
                }
            }
        }
        let speakers = pa
            .outputs
            .iter()
            .any(|o| matches!(o, Output::MqttSpeaker(_)))
            .then(|| Arc::new(SpeakerLink::new(speaker_accounts)));
        wiring.speakers = speakers.clone();
        (
            Outputs {
                zones: pa.zones.clone(),
                config: pa
                    .outputs
                    .iter()
                    .map(|o| (o.id().to_string(), o.clone()))
                    .collect(),
                driven,
                health: Mutex::new(health),
                heartbeats: Mutex::new(HashMap::new()),
                speakers,
            },
            wiring,
        )
    }

    pub fn output(&self, id: &str) -> Option<(&Output, &Driven)> {
        Some((self.config.get(id)?, self.driven.get(id)?))
    }

    pub fn zone(&self, id: &str) -> Option<&Zone> {
        self.zones.iter().find(|z| z.id == id)
    }

    pub fn note(&self, output: &str, ok: bool, detail: &str, at_ms: i64) {
        if let Ok(mut h) = self.health.lock() {
            h.insert(
                output.to_string(),
                Health {
                    status: if ok { "ok" } else { "error" }.into(),
                    detail: detail.to_string(),
                    at_ms: Some(at_ms),
                },
            );
        }
    }

    /// An output's health now: speakers by their heartbeat, others by their last use.
    pub fn health(&self, output: &str, now_ms: i64) -> Health {
        let last = self.health.lock().ok().and_then(|h| h.get(output).cloned());
        if matches!(self.driven.get(output), Some(Driven::Speaker)) {
            let beat = self
                .heartbeats
                .lock()
                .ok()
                .and_then(|h| h.get(output).copied());
            return match beat {
                Some(t) if now_ms - t <= HEARTBEAT_STALE_MS => Health {
                    status: "ok".into(),
                    detail: last.map(|l| l.detail).unwrap_or_default(),
                    at_ms: Some(t),
                },
                Some(t) => Health {
                    status: "offline".into(),
                    detail: "no heartbeat for more than 90 s".into(),
                    at_ms: Some(t),
                },
                None => last.unwrap_or(Health {
                    status: "offline".into(),
                    detail: "no heartbeat yet".into(),
                    at_ms: None,
                }),
            };
        }
        last.unwrap_or(Health {
            status: "unknown".into(),
            detail: "not used yet".into(),
            at_ms: None,
        })
    }

    /// Whether a speaker has been heard from recently.
    pub fn speaker_online(&self, id: &str, now_ms: i64) -> bool {
        self.heartbeats
            .lock()
            .ok()
            .and_then(|h| h.get(id).copied())
            .is_some_and(|t| now_ms - t <= HEARTBEAT_STALE_MS)
    }

    /// Records what a speaker said (any message counts as a sign of life).
    pub fn heard(&self, message: &SpeakerMessage, now_ms: i64) {
        if let Ok(mut h) = self.heartbeats.lock() {
            h.insert(message.speaker.clone(), now_ms);
        }
    }

    /// Sends a command to a speaker.
    pub fn command_speaker(&self, speaker: &str, payload: &serde_json::Value) {
        if let Some(link) = &self.speakers {
            link.command(speaker, Bytes::from(payload.to_string()));
        }
    }

    /// Listens to what speakers publish.
    pub fn speaker_messages(&self) -> Option<tokio::sync::broadcast::Receiver<SpeakerMessage>> {
        self.speakers.as_ref().map(|l| l.messages.subscribe())
    }

    /// The speaker account a username and password sign in as (for fetching audio over HTTP).
    pub fn speaker_sign_in(&self, username: &str, password: &str) -> Option<String> {
        let link = self.speakers.as_ref()?;
        let account = link.accounts.get(username)?;
        let (a, b) = (account.password.as_bytes(), password.as_bytes());
        let same =
            a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
        same.then(|| account.device.clone())
    }
}
