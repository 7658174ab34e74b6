//! The node as a client of an external MQTT broker (rumqttc): it subscribes to `sensors/+` and
//! `sensors/+/senml` at QoS 1 on a persistent session and acknowledges each message only after its
//! readings are committed. If the node dies before that, the broker still holds the message and
//! delivers it again when the node's session resumes, so a crash loses nothing.
//!
//! The broker authenticates the sensors; the node trusts the topic, so the broker's ACL must confine
//! each sensor to its own topic (for mosquitto: `pattern write sensors/%u/#`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::mqttbytes::v4::Packet;
use rumqttc::{AsyncClient, Event, MqttOptions, QoS, Transport};
use tokio::sync::mpsc;

use crate::driver::{Driver, DriverContext, DriverError, DriverFuture, ErrorKind};
use crate::mqtt_broker::{Format, readings_for};

#[derive(Debug, Clone)]
pub struct ExternalBrokerSettings {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
    pub client_id: String,
}

pub struct ExternalBroker {
    pub settings: ExternalBrokerSettings,
    /// Device id → payload format, for the devices that publish through this broker.
    pub devices: HashMap<String, Format>,
}

fn tls_config(ca_file: Option<&PathBuf>) -> Result<rustls::ClientConfig, DriverError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| DriverError::io(format!("reading {}", path.display()), e))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert =
                    cert.map_err(|e| DriverError::io(format!("parsing {}", path.display()), e))?;
                roots.add(cert).map_err(|e| {
                    DriverError::Other(format!("CA certificate in {}: {e}", path.display()))
                })?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DriverError::Other(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl ExternalBroker {
    fn options(&self) -> Result<MqttOptions, DriverError> {
        let s = &self.settings;
        let mut options = MqttOptions::new(s.client_id.clone(), s.host.clone(), s.port);
        options
            .set_keep_alive(Duration::from_secs(30))
            // A persistent session: the broker keeps QoS 1 messages for the node while it is away.
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_max_packet_size(256 * 1024, 256 * 1024)
            .set_inflight(1000);
        let password = match (&s.password, &s.password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| DriverError::io(format!("reading {}", path.display()), e))?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
            ),
            (None, None) => None,
        };
        if let Some(username) = &s.username {
            options.set_credentials(username.clone(), password.unwrap_or_default());
        }
        if s.tls {
            options.set_transport(Transport::tls_with_config(
                tls_config(s.ca_file.as_ref())?.into(),
            ));
        }
        Ok(options)
    }
}

impl Driver for ExternalBroker {
    fn name(&self) -> String {
        format!(
            "mqtt_external:{}:{}",
            self.settings.host, self.settings.port
        )
    }

    fn run<'a>(&'a mut self, ctx: &'a DriverContext) -> DriverFuture<'a> {
        Box::pin(async move {
            let (client, mut events) = AsyncClient::new(self.options()?, 1024);
            // Acknowledgements go out in arrival order, each once its readings are committed.
            let (ack_tx, mut ack_rx) =
                mpsc::channel::<(tokio::sync::oneshot::Receiver<bool>, rumqttc::Publish)>(4096);
            let ack_client = client.clone();
            let acker = tokio::spawn(async move {
                while let Some((committed, publish)) = ack_rx.recv().await {
                    if !committed.await.unwrap_or(false) {
                        // Not durable: leave it unacknowledged so the broker redelivers it.
                        return;
                    }
                    if ack_client.ack(&publish).await.is_err() {
                        return;
                    }
                }
            });
            let result = loop {
                let event = tokio::select! {
                    e = events.poll() => e,
                    () = ctx.shutdown.cancelled() => break Ok(()),
                };
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        tracing::info!(broker = %self.name(), "connected to the external MQTT broker");
                        let subscribe = client
                            .subscribe_many([
                                rumqttc::SubscribeFilter::new("sensors/+".into(), QoS::AtLeastOnce),
                                rumqttc::SubscribeFilter::new(
                                    "sensors/+/senml".into(),
                                    QoS::AtLeastOnce,
                                ),
                            ])
                            .await;
                        if let Err(e) = subscribe {
                            break Err(DriverError::Other(format!("subscribing: {e}")));
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        tracing::info!(broker = %self.name(), "subscribed to sensors/+ on the external MQTT broker");
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let now = ctx.now();
                        let device = p
                            .topic
                            .strip_prefix("sensors/")
                            .map(|rest| rest.split('/').next().unwrap_or(""))
                            .unwrap_or("");
                        let committed = match self.devices.get(device) {
                            Some(format) => {
                                match readings_for(device, *format, &p.topic, &p.payload, now) {
                                    Some(Ok(readings)) => {
                                        ctx.health.ok(device, now);
                                        Some(ctx.sink.send_acked(readings).await?)
                                    }
                                    Some(Err(e)) => {
                                        ctx.health.error(
                                            device,
                                            ErrorKind::Malformed,
                                            e.to_string(),
                                            now,
                                        );
                                        None
                                    }
                                    None => None,
                                }
                            }
                            None => {
                                tracing::debug!(topic = %crate::untrusted::Untrusted(&p.topic), "message for a device this node does not have");
                                None
                            }
                        };
                        let committed = committed.unwrap_or_else(|| {
                            let (tx, rx) = tokio::sync::oneshot::channel();
                            let _ = tx.send(true);
                            rx
                        });
                        if p.qos != QoS::AtMostOnce && ack_tx.send((committed, p)).await.is_err() {
                            break Err(DriverError::Other("acknowledgements stopped".into()));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => break Err(DriverError::Other(format!("external MQTT broker: {e}"))),
                }
            };
            drop(ack_tx);
            // Messages already committed still get their acknowledgement before the link goes.
            let _ = tokio::time::timeout(Duration::from_secs(2), acker).await;
            let _ = client.disconnect().await;
            // The event loop sends what it was handed (acknowledgements, then DISCONNECT) only while
            // polled.
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                while events.poll().await.is_ok() {}
            })
            .await;
            result
        })
    }
}
