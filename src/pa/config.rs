//! `[pa]`: the loudspeaker outputs this node drives and the zones they form, with the exact keys of
//! issue 13, checked at start so a wrong port, a zone naming an unknown output or a speaker without
//! a password is refused with the key named, never discovered in a flood.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::rules::eval::Level;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaConfig {
    /// The espeak-ng voice for spoken text; Mandarin by default.
    pub voice: String,
    /// Speaking rate, words per minute.
    pub rate: u32,
    /// Live broadcasts at these levels need a second person's approval.
    pub two_person: Vec<Level>,
    /// Public keys (base64url, as `township-node id` prints them) of nodes whose signed broadcast
    /// orders play here besides this node's own and its pinned upstream's: the county's, on a
    /// village hub under a township.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trusted_keys: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<Output>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<Zone>,
}

impl Default for PaConfig {
    fn default() -> Self {
        PaConfig {
            voice: "cmn".into(),
            rate: 150,
            two_person: vec![Level::Red, Level::Orange],
            trusted_keys: Vec::new(),
            outputs: Vec::new(),
            zones: Vec::new(),
        }
    }
}

/// One output, by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Output {
    /// A relay board on an RS-485 line powering an amplifier zone.
    ModbusRelay(RelayOutput),
    /// An IP speaker on the embedded broker.
    MqttSpeaker(SpeakerOutput),
    /// Local audio through a command.
    AudioCommand(CommandOutput),
}

impl Output {
    pub fn id(&self) -> &str {
        match self {
            Output::ModbusRelay(o) => &o.id,
            Output::MqttSpeaker(o) => &o.id,
            Output::AudioCommand(o) => &o.id,
        }
    }

    /// A monitor output: the only kind of output a test broadcast may reach.
    pub fn is_test(&self) -> bool {
        match self {
            Output::ModbusRelay(o) => o.test,
            Output::MqttSpeaker(o) => o.test,
            Output::AudioCommand(o) => o.test,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Output::ModbusRelay(_) => "modbus_relay",
            Output::MqttSpeaker(_) => "mqtt_speaker",
            Output::AudioCommand(_) => "audio_command",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayOutput {
    pub id: String,
    /// May be the same line as Modbus sensors: one driver per line.
    pub port: String,
    #[serde(default = "default_baud")]
    pub baud: u32,
    #[serde(default = "default_parity")]
    pub parity: String,
    pub slave: u8,
    pub coil: u16,
    /// Amplifier power-up before audio starts.
    #[serde(default = "default_warmup", with = "humantime_serde")]
    pub warmup: Duration,
    #[serde(default)]
    pub test: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeakerOutput {
    pub id: String,
    /// The speaker's MQTT username on the embedded broker (confined to `pa/{id}/…`).
    pub username: String,
    pub password_file: PathBuf,
    #[serde(default)]
    pub test: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandOutput {
    pub id: String,
    /// The program and its arguments; `{file}` is replaced by the audio file's path.
    pub command: Vec<String>,
    #[serde(default)]
    pub test: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zone {
    pub id: String,
    pub name: String,
    pub area: String,
    pub outputs: Vec<String>,
}

fn default_baud() -> u32 {
    9600
}

fn default_parity() -> String {
    "none".into()
}

fn default_warmup() -> Duration {
    Duration::from_secs(2)
}

/// Ids are used in MQTT topics and URLs: lowercase letters, digits, `-` and `_`.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Checks `[pa]`; the error is (key, what is wrong). `device_ids` are the sensors' ids and MQTT
/// usernames, which a speaker may not share.
pub fn validate(pa: &PaConfig, device_ids: &[String]) -> Result<(), (String, String)> {
    let bad = |key: String, message: &str| Err((key, message.to_string()));
    if !(80..=450).contains(&pa.rate) {
        return bad("pa.rate".into(), "words per minute between 80 and 450");
    }
    if pa.voice.is_empty()
        || pa.voice.len() > 32
        || !pa
            .voice
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'+')
    {
        return bad("pa.voice".into(), "an espeak-ng voice name such as cmn");
    }
    for (i, key) in pa.trusted_keys.iter().enumerate() {
        if key.parse::<township_sync::PublicKey>().is_err() {
            return bad(
                format!("pa.trusted_keys[{i}]"),
                "a node public key as `township-node id` prints it",
            );
        }
    }
    let mut ids = std::collections::HashSet::new();
    let mut usernames = std::collections::HashSet::new();
    for (i, output) in pa.outputs.iter().enumerate() {
        let key = |field: &str| format!("pa.outputs[{i}].{field}");
        if !valid_id(output.id()) {
            return bad(key("id"), "lowercase letters, digits, - and _ (at most 64)");
        }
        if !ids.insert(output.id().to_string()) {
            return bad(key("id"), "used by another output");
        }
        match output {
            Output::ModbusRelay(r) => {
                if r.port.is_empty() {
                    return bad(key("port"), "the serial port, such as /dev/ttyUSB1");
                }
                if !["none", "even", "odd"].contains(&r.parity.as_str()) {
                    return bad(key("parity"), "none, even or odd");
                }
                if !(1..=247).contains(&r.slave) {
                    return bad(key("slave"), "a Modbus slave address from 1 to 247");
                }
                if r.baud == 0 || r.baud > 921_600 {
                    return bad(key("baud"), "a serial speed such as 9600");
                }
                if r.warmup > Duration::from_secs(30) {
                    return bad(key("warmup"), "at most 30s");
                }
            }
            Output::MqttSpeaker(s) => {
                if !valid_id(&s.username) {
                    return bad(key("username"), "lowercase letters, digits, - and _");
                }
                if device_ids.contains(&s.username) || !usernames.insert(s.username.clone()) {
                    return bad(
                        key("username"),
                        "used by a sensor or another speaker: every speaker signs in as itself",
                    );
                }
                if s.password_file.as_os_str().is_empty() {
                    return bad(
                        key("password_file"),
                        "a file holding the speaker's password",
                    );
                }
            }
            Output::AudioCommand(c) => {
                if c.command.is_empty() || c.command[0].is_empty() {
                    return bad(key("command"), "a program and its arguments");
                }
                if !c.command.iter().any(|a| a.contains("{file}")) {
                    return bad(
                        key("command"),
                        "name the audio file with {file}, as in [\"aplay\", \"-q\", \"{file}\"]",
                    );
                }
            }
        }
    }
    let mut zone_ids = std::collections::HashSet::new();
    // A relay in two zones would be switched off by one zone while the other still plays.
    let mut relay_zones: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for (i, zone) in pa.zones.iter().enumerate() {
        let key = |field: &str| format!("pa.zones[{i}].{field}");
        if !valid_id(&zone.id) || !zone_ids.insert(zone.id.clone()) {
            return bad(key("id"), "unique; lowercase letters, digits, - and _");
        }
        let n = zone.name.trim().chars().count();
        if n == 0 || n > 100 {
            return bad(key("name"), "1 to 100 characters");
        }
        if zone.area.parse::<township_sync::AreaCode>().is_err() {
            return bad(key("area"), "an area code (6, 9 or 12 digits)");
        }
        if zone.outputs.is_empty() {
            return bad(key("outputs"), "at least one output");
        }
        if let Some(unknown) = zone.outputs.iter().find(|o| !ids.contains(*o)) {
            return Err((
                key("outputs"),
                format!("no output `{unknown}` in [[pa.outputs]]"),
            ));
        }
        for o in &zone.outputs {
            let relay = pa
                .outputs
                .iter()
                .any(|out| out.id() == o && matches!(out, Output::ModbusRelay(_)));
            if relay && let Some(other) = relay_zones.insert(o, &zone.id) {
                return Err((
                    key("outputs"),
                    format!(
                        "relay `{o}` already powers zone `{other}`: a relay belongs to one zone"
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
voice = "cmn"
rate = 150
two_person = ["red", "orange"]

[[outputs]]
id = "amp-wangzhai"
kind = "modbus_relay"
port = "/dev/ttyUSB1"
baud = 9600
parity = "none"
slave = 1
coil = 0
warmup = "2s"

[[outputs]]
id = "spk-xiayang-01"
kind = "mqtt_speaker"
username = "spk-xiayang-01"
password_file = "/etc/township-node/spk-xiayang-01.pw"

[[outputs]]
id = "office"
kind = "audio_command"
command = ["aplay", "-q", "{file}"]
test = true

[[zones]]
id = "wangzhai"
name = "王宅村"
area = "330723001001"
outputs = ["amp-wangzhai", "spk-xiayang-01"]
"#;

    #[test]
    fn the_issue_example_reads_exactly() {
        let pa: PaConfig = toml::from_str(EXAMPLE).unwrap();
        validate(&pa, &[]).unwrap();
        assert_eq!(pa.outputs.len(), 3);
        assert!(
            matches!(&pa.outputs[0], Output::ModbusRelay(r) if r.warmup == Duration::from_secs(2) && r.coil == 0)
        );
        assert!(pa.outputs[2].is_test() && !pa.outputs[0].is_test());
        assert_eq!(pa.zones[0].outputs, ["amp-wangzhai", "spk-xiayang-01"]);
        assert_eq!(pa.two_person, [Level::Red, Level::Orange]);
    }

    #[test]
    fn mistakes_are_refused_with_the_key_named() {
        let base: PaConfig = toml::from_str(EXAMPLE).unwrap();
        let mut unknown_output = base.clone();
        unknown_output.zones[0].outputs.push("amp-nowhere".into());
        let mut shared_relay = base.clone();
        shared_relay.zones.push(Zone {
            id: "second".into(),
            name: "另一个村".into(),
            area: "330723001002".into(),
            outputs: vec!["amp-wangzhai".into()],
        });
        assert_eq!(
            validate(&shared_relay, &[]).map_err(|(k, _)| k),
            Err("pa.zones[1].outputs".to_string())
        );
        assert_eq!(
            validate(&unknown_output, &[]).unwrap_err().0,
            "pa.zones[0].outputs"
        );
        let clash = vec!["spk-xiayang-01".to_string()];
        assert_eq!(
            validate(&base, &clash).unwrap_err().0,
            "pa.outputs[1].username"
        );
        let mut no_file = base.clone();
        if let Output::AudioCommand(c) = &mut no_file.outputs[2] {
            c.command = vec!["aplay".into()];
        }
        assert_eq!(
            validate(&no_file, &[]).unwrap_err().0,
            "pa.outputs[2].command"
        );
        assert!(
            toml::from_str::<PaConfig>(&EXAMPLE.replace("coil = 0", "coil = 0\ncolour = 1"))
                .is_err()
        );
        assert!(
            toml::from_str::<PaConfig>(&EXAMPLE.replace("modbus_relay", "smoke_signal")).is_err()
        );
        let mut parity = base.clone();
        if let Output::ModbusRelay(r) = &mut parity.outputs[0] {
            r.parity = "mark".into();
        }
        assert_eq!(
            validate(&parity, &[]).unwrap_err().0,
            "pa.outputs[0].parity"
        );
    }
}
