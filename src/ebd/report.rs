//! What this node posts to the platform, each in a new HTTP connection as GD/J 083 has it: the
//! `ConnectionCheck` heartbeat to `[ebd] platform_url`, an `EBMStateResponse` whenever an order's
//! state changes (to the order's `SRC/URL`, else the platform URL) until the platform acknowledges
//! it, and the answers to `EBMStateRequest` and `OMDRequest`. Every package is signed with the
//! node's SM2 key; every answer must be an `EBDResponse` for that package, signed by a trusted
//! platform certificate when it carries a signature, with ResultCode 1, or the post counts as
//! failed and a state report is tried again.

use std::collections::HashMap;
use std::time::Duration;

use hyper::body::Bytes;
use hyper::header::HeaderValue;

use super::package::{self, PackageError};
use super::{Runtime, orders, sm, tar};
use crate::outbound::{self, OutboundError, Target};

/// GD/J 083's test plan gives a platform 20 s to answer.
const POST_DEADLINE: Duration = Duration::from_secs(20);
/// Largest receipt read.
const MAX_RECEIPT_BYTES: usize = 1024 * 1024;
/// The first wait before a state report that failed is tried again; doubled up to a minute.
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// A request from the platform answered in a new POST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowUp {
    State {
        ebm_id: String,
        reply_url: Option<String>,
        related: String,
        dest: String,
    },
    Omd {
        omd_type: String,
        start_ms: Option<i64>,
        end_ms: Option<i64>,
        reply_url: Option<String>,
        related: String,
        dest: String,
    },
}

/// Why a post did not get its acknowledgement. Every kind is worth another try later.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    Unreachable(String),
    #[error("the platform answered HTTP {0}")]
    Status(u16),
    #[error("the platform's receipt: {0}")]
    Receipt(String),
    #[error("the platform refused the package: ResultCode {code} {desc}")]
    Refused { code: String, desc: String },
}

fn multipart(ebdid: &str, tar: &[u8]) -> (String, Vec<u8>) {
    let boundary = format!("----township-ebd-{}", uuid::Uuid::new_v4().simple());
    let mut body = Vec::with_capacity(tar.len() + 300);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"EBDT_{ebdid}.tar\"\r\nContent-Type: application/x-tar\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(tar);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn post_once(target: &Target, ebdid: &str, tar: &[u8]) -> Result<Bytes, SendError> {
    let (content_type, body) = multipart(ebdid, tar);
    let content_type = HeaderValue::from_str(&content_type)
        .map_err(|e| SendError::Unreachable(format!("bad content type: {e}")))?;
    let answer = outbound::exchange(
        target,
        hyper::Method::POST,
        &[(hyper::header::CONTENT_TYPE, content_type)],
        Bytes::from(body),
        MAX_RECEIPT_BYTES,
    )
    .await
    .map_err(|e| match e {
        OutboundError::Unreachable(m) => SendError::Unreachable(m),
        OutboundError::TooLarge { .. } => SendError::Receipt(e.to_string()),
    })?;
    if answer.status != 200 {
        return Err(SendError::Status(answer.status));
    }
    Ok(answer.body)
}

/// Checks a receipt: a tar with an `EBDResponse` for `ebdid`, signed by a trusted certificate if
/// it is signed at all (receipts may be unsigned), with ResultCode 1.
pub fn check_receipt(rt: &Runtime, ebdid: &str, body: &[u8]) -> Result<(), SendError> {
    let bad = |e: &dyn std::fmt::Display| SendError::Receipt(e.to_string());
    let members = tar::read(body).map_err(|e| bad(&e))?;
    let files = package::sort_members(members).map_err(|e| bad(&e))?;
    let ebdb = package::parse_ebdb(files.ebdb).map_err(|e| bad(&e))?;
    if ebdb.header.ebd_type != "EBDResponse" {
        return Err(bad(&format!(
            "an {} instead of an EBDResponse",
            ebdb.header.ebd_type
        )));
    }
    if ebdb
        .header
        .related_ebdid
        .as_deref()
        .is_some_and(|r| r != ebdid)
    {
        return Err(bad(&"it answers another package"));
    }
    if let Some(ebds) = files.ebds {
        let ebds = package::parse_ebds(ebds).map_err(|e: PackageError| bad(&e))?;
        let value = sm::SignatureValue::parse(&ebds.signature_value).map_err(|e| bad(&e))?;
        let verified = rt
            .trust
            .find(&value.cert)
            .is_some_and(|cert| sm::verify_package(cert, files.ebdb, &value));
        if !verified {
            return Err(bad(
                &"its signature does not verify against a trusted certificate",
            ));
        }
    }
    let body = ebdb.body().ok_or_else(|| bad(&"no EBDResponse body"))?;
    let code = package::leaf(body, "ResultCode").unwrap_or_default();
    if code != "1" {
        return Err(SendError::Refused {
            code,
            desc: package::leaf(body, "ResultDesc").unwrap_or_default(),
        });
    }
    Ok(())
}

/// Posts a package to `url` and checks its receipt.
pub async fn send(rt: &Runtime, url: &str, ebdid: &str, tar: &[u8]) -> Result<(), SendError> {
    let target = Target::parse(url)
        .ok_or_else(|| SendError::Unreachable(format!("not an http:// address: {url}")))?;
    let result = match tokio::time::timeout(POST_DEADLINE, post_once(&target, ebdid, tar)).await {
        Err(_) => Err(SendError::Unreachable(format!(
            "{}:{} did not answer within {} s",
            target.host,
            target.port,
            POST_DEADLINE.as_secs()
        ))),
        Ok(Err(e)) => Err(e),
        Ok(Ok(body)) => check_receipt(rt, ebdid, &body),
    };
    let counter = if result.is_ok() {
        &rt.counters.sent_ok
    } else {
        &rt.counters.sent_failed
    };
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    result
}

/// Where a reply goes: the URL the request came with, else the platform's.
fn reply_target<'a>(rt: &'a Runtime, reply_url: Option<&'a str>) -> Option<&'a str> {
    reply_url
        .filter(|u| Target::parse(u).is_some())
        .or(rt.config.platform_url.as_deref())
}

async fn heartbeat(rt: &Runtime) {
    let Some(url) = rt.config.platform_url.clone() else {
        return;
    };
    let now = rt.ctx.now_ms();
    let (ebdid, tar) = rt.package("ConnectionCheck", None, None, |w| {
        w.leaf("RptTime", &package::format_time(now));
    });
    match send(rt, &url, &ebdid, &tar).await {
        Ok(()) => rt
            .counters
            .last_heartbeat_ok_ms
            .store(rt.ctx.now_ms(), std::sync::atomic::Ordering::Relaxed),
        Err(e) => {
            tracing::debug!(error = %e, "the emergency-broadcast platform did not acknowledge a heartbeat")
        }
    }
}

async fn answer(rt: &Runtime, follow_up: FollowUp) {
    let now = rt.ctx.now_ms();
    let (reply_url, related, dest) = match &follow_up {
        FollowUp::State {
            reply_url,
            related,
            dest,
            ..
        }
        | FollowUp::Omd {
            reply_url,
            related,
            dest,
            ..
        } => (reply_url.clone(), related.clone(), dest.clone()),
    };
    let Some(url) = reply_target(rt, reply_url.as_deref()).map(str::to_string) else {
        tracing::warn!(
            "a platform request cannot be answered: it gave no SRC/URL and [ebd] platform_url is not set"
        );
        return;
    };
    let (ebdid, tar) = match follow_up {
        FollowUp::State { ebm_id, .. } => {
            let id = ebm_id.clone();
            let state = rt
                .store
                .read(move |conn| orders::state_for(conn, &id))
                .await
                .ok()
                .flatten()
                .unwrap_or((0, orders::state_desc(0).to_string()));
            rt.package("EBMStateResponse", Some(&dest), Some(&related), |w| {
                orders::state_response_body(w, &ebm_id, state.0, &state.1, now, &rt.ebrid);
            })
        }
        FollowUp::Omd {
            omd_type,
            start_ms,
            end_ms,
            ..
        } => match omd_type.as_str() {
            "EBMBrdLog" => {
                let items = rt
                    .store
                    .read(move |conn| orders::log_items(conn, start_ms, end_ms))
                    .await
                    .unwrap_or_default();
                rt.package("EBMBrdLog", Some(&dest), Some(&related), |w| {
                    orders::log_body(w, &items, start_ms, end_ms);
                })
            }
            "EBRDTState" => rt.package("EBRDTState", Some(&dest), Some(&related), |w| {
                orders::terminal_report_body(w, rt, false, now);
            }),
            _ => rt.package("EBRDTInfo", Some(&dest), Some(&related), |w| {
                orders::terminal_report_body(w, rt, true, now);
            }),
        },
    };
    if let Err(e) = send(rt, &url, &ebdid, &tar).await {
        tracing::warn!(error = %e, "an answer to the emergency-broadcast platform was not acknowledged");
    }
}

/// Brings order states up to date and reports each change not yet acknowledged.
async fn report_states(rt: &Runtime, backoff: &mut HashMap<String, (i64, Duration)>) {
    let now = rt.ctx.now_ms();
    // Looked at on a reader; most seconds there is nothing to do, and the writer is woken only
    // when a state really moved.
    let looked = rt
        .store
        .read(|conn| {
            if !orders::needs_work(conn)? {
                return Ok::<_, crate::store::StoreError>((Vec::new(), Vec::new()));
            }
            Ok((orders::moved_states(conn)?, orders::unreported(conn)?))
        })
        .await;
    let (moved, mut pending) = match looked {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the platform orders' states");
            return;
        }
    };
    if !moved.is_empty() {
        pending = match rt
            .store
            .write(move |conn| {
                orders::set_states(conn, &moved, now)?;
                orders::unreported(conn)
            })
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "could not record the platform orders' states");
                return;
            }
        };
    }
    backoff.retain(|id, _| pending.iter().any(|p| &p.ebm_id == id));
    for order in pending {
        if backoff.get(&order.ebm_id).is_some_and(|(at, _)| *at > now) {
            continue;
        }
        let Some(url) = reply_target(rt, order.reply_url.as_deref()).map(str::to_string) else {
            continue;
        };
        let (ebdid, tar) = rt.package(
            "EBMStateResponse",
            Some(&order.src_ebrid),
            Some(&order.ebdid),
            |w| {
                orders::state_response_body(
                    w,
                    &order.ebm_id,
                    order.state,
                    &order.desc,
                    now,
                    &rt.ebrid,
                );
            },
        );
        match send(rt, &url, &ebdid, &tar).await {
            Ok(()) => {
                backoff.remove(&order.ebm_id);
                let (id, state) = (order.ebm_id.clone(), order.state);
                if let Err(e) = rt
                    .store
                    .write(move |conn| orders::mark_reported(conn, &id, state))
                    .await
                {
                    tracing::warn!(error = %e, "could not note a state report as acknowledged");
                }
            }
            Err(e) => {
                let wait = backoff
                    .get(&order.ebm_id)
                    .map_or(RETRY_FIRST, |(_, w)| (*w * 2).min(RETRY_MAX));
                let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(60_000);
                backoff.insert(order.ebm_id.clone(), (now + wait_ms, wait));
                tracing::info!(ebm = %order.ebm_id, error = %e, "a state report to the emergency-broadcast platform failed; trying again later");
            }
        }
    }
    persist_ids(rt).await;
}

/// Writes the id sequence when heartbeats or answers moved it (every minute at most).
async fn persist_ids(rt: &Runtime) {
    if !rt.ids.moved() {
        return;
    }
    let ids = rt.ids.clone();
    if let Err(e) = rt.store.write(move |conn| ids.persist(conn)).await {
        tracing::warn!(error = %e, "could not persist the EBD id sequence");
    }
}

/// Runs until shutdown: heartbeats, answers, and state reports as broadcasts move.
pub async fn run(rt: Runtime, mut follow_ups: tokio::sync::mpsc::Receiver<FollowUp>) {
    let mut beat = tokio::time::interval(rt.config.heartbeat);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut persist = tokio::time::interval(Duration::from_secs(60));
    persist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Woken by the store's commit signal, a watch every listener sees (the records Notify wakes
    // one waiter, and the playback engine and the warning events wait on it). Commits come in
    // bursts on a busy node: one look per burst, at most every 200 ms.
    let mut commits = rt.store.commits();
    let mut backoff = HashMap::new();
    let mut last_look = tokio::time::Instant::now();
    loop {
        let settle = tokio::time::sleep_until(last_look + Duration::from_millis(200));
        tokio::select! {
            () = rt.shutdown.cancelled() => break,
            _ = beat.tick() => heartbeat(&rt).await,
            _ = persist.tick() => persist_ids(&rt).await,
            Some(f) = follow_ups.recv() => answer(&rt, f).await,
            changed = async { settle.await; commits.changed().await } => {
                if changed.is_err() {
                    break;
                }
                last_look = tokio::time::Instant::now();
                report_states(&rt, &mut backoff).await;
            }
            _ = tick.tick() => {
                last_look = tokio::time::Instant::now();
                report_states(&rt, &mut backoff).await;
            }
        }
    }
    persist_ids(&rt).await;
}
