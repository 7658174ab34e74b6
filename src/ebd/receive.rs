//! A received package, from its bytes to the receipt: read the tar, find the files, verify the
//! signature, refuse replays, and act (an order becomes a broadcast, a cancel cancels it, a request
//! is answered later in a new POST). Every outcome is a ResultCode for the `EBDResponse`.
//!
//! The checks that need no database (tar, XML, signature, audio) run on the blocking pool, so a
//! flood of garbage never reaches the writer; what must be atomic (the replay check, the order and
//! the audit entry) runs in one write job. A signature that fails and a replay are audited.

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::json;

use super::package::{self, Ebm, Header, PackageError};
use super::report::FollowUp;
use super::sm::{self, CertSn};
use super::{Runtime, Trust, orders, tar};
use crate::audit::Event;
use crate::auth::actor::SYSTEM;
use crate::store::StoreError;

/// What the receipt says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub code: u8,
    pub desc: String,
    /// The received EBDID, when it could be read.
    pub related: Option<String>,
    /// The sender, for the receipt's DEST.
    pub sender: Option<String>,
}

/// An attached audio file, checked: where it lies in the package (taken from there without a copy).
#[derive(Debug, Clone)]
pub struct Audio {
    pub range: std::ops::Range<usize>,
    pub mime: &'static str,
    pub duration_ms: i64,
}

/// What a verified package asks for.
#[derive(Debug)]
pub enum Request {
    Order {
        ebm: Box<Ebm>,
        audio: Option<Audio>,
    },
    StateRequest {
        ebm_id: String,
    },
    Omd {
        omd_type: String,
        start_ms: Option<i64>,
        end_ms: Option<i64>,
    },
    Heartbeat,
    /// A result notification (an `EBDResponse` in a new connection): nothing to do but take it.
    Receipt,
}

/// A package that passed every check that needs no database.
#[derive(Debug)]
pub struct Checked {
    pub header: Header,
    /// The certificate and counter it was signed with (none for unsigned heartbeats and receipts).
    pub signer: Option<(CertSn, u32)>,
    pub request: Request,
}

/// A refusal before the database: the error and whatever of the header could be read.
#[derive(Debug)]
pub struct Refused {
    pub error: PackageError,
    pub header: Option<Header>,
    pub related: Option<String>,
}

fn refuse(error: PackageError, header: Option<&Header>, related: Option<String>) -> Box<Refused> {
    Box::new(Refused {
        error,
        related: header.map(|h| h.ebdid.clone()).or(related),
        header: header.cloned(),
    })
}

/// The EBDID a member name carries (`EBDB_<EBDID>.xml`), if it has the shape of one.
fn id_from_name(name: &str) -> Option<String> {
    let id = name.strip_prefix("EBDB_")?.strip_suffix(".xml")?;
    package::is_ebdid(id).then(|| id.to_string())
}

fn digest_matches(expected: &str, bytes: &[u8]) -> bool {
    let expected = expected.trim().to_ascii_lowercase();
    match expected.len() {
        64 => {
            hex::encode(sm::sm3_digest(bytes)) == expected
                || hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes)) == expected
        }
        40 => {
            hex::encode(ring::digest::digest(
                &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
                bytes,
            )) == expected
        }
        _ => false,
    }
}

/// The audio an EBM attaches in its package, checked against its `Size` and `Digest`.
fn attached_audio(ebm: &Ebm, files: &package::Files<'_>) -> Result<Option<Audio>, PackageError> {
    for aux in &ebm.auxiliaries {
        if aux.desc.contains("://") {
            // An audio URL: this node fetches nothing an order names; it speaks the text instead.
            continue;
        }
        let Some(member) = files.resources.iter().find(|m| m.name == aux.desc) else {
            return Err(PackageError::Missing(format!(
                "the Auxiliary `{}` is not in the package",
                aux.desc.chars().take(80).collect::<String>()
            )));
        };
        if aux.size.is_some_and(|s| s != member.bytes.len() as u64) {
            return Err(PackageError::Missing(format!(
                "the Auxiliary `{}` is {} bytes, not the {} its Size says",
                aux.desc,
                member.bytes.len(),
                aux.size.unwrap_or_default()
            )));
        }
        if let Some(d) = &aux.digest
            && !digest_matches(d, member.bytes)
        {
            return Err(PackageError::Missing(format!(
                "the Auxiliary `{}` does not match its Digest",
                aux.desc
            )));
        }
        if aux.kind != "2" && !aux.desc.to_ascii_lowercase().ends_with(".mp3") {
            continue;
        }
        let (mime, duration) = crate::pa::audio::probe(member.bytes)
            .map_err(|e| PackageError::Other(format!("the audio `{}`: {e}", aux.desc)))?;
        return Ok(Some(Audio {
            range: member.offset..member.offset + member.bytes.len(),
            mime,
            duration_ms: i64::try_from(duration.as_millis()).unwrap_or(i64::MAX),
        }));
    }
    Ok(None)
}

/// Every check of a package that needs no database.
pub fn check(trust: &Trust, archive: &[u8]) -> Result<Checked, Box<Refused>> {
    let members = tar::read(archive)
        .map_err(|e| refuse(PackageError::Parse(format!("the package: {e}")), None, None))?;
    let first_id = members.iter().find_map(|m| id_from_name(&m.name));
    let files = package::sort_members(members).map_err(|e| refuse(e, None, first_id.clone()))?;
    let ebdb = package::parse_ebdb(files.ebdb).map_err(|e| refuse(e, None, first_id.clone()))?;
    let header = ebdb.header.clone();
    let fail = |e: PackageError| refuse(e, Some(&header), None);
    if files.ebdb_name != format!("EBDB_{}.xml", header.ebdid) {
        return Err(fail(PackageError::Parse(
            "the EBDB file's name does not carry its EBDID".into(),
        )));
    }
    let signer = match files.ebds {
        None if package::may_be_unsigned(&header.ebd_type) => None,
        None => {
            return Err(fail(PackageError::Signature(format!(
                "a {} package must be signed, and this one has no EBDS",
                header.ebd_type
            ))));
        }
        Some(ebds) => {
            let ebds = package::parse_ebds(ebds).map_err(fail)?;
            if ebds
                .related_ebdid
                .as_deref()
                .is_some_and(|r| r != header.ebdid)
            {
                return Err(fail(PackageError::Signature(
                    "the EBDS signs another EBDID".into(),
                )));
            }
            let value = sm::SignatureValue::parse(&ebds.signature_value)
                .map_err(|e| fail(PackageError::Signature(e.to_string())))?;
            let Some(cert) = trust.find(&value.cert) else {
                return Err(fail(PackageError::Signature(format!(
                    "no trusted certificate has the SN {}",
                    value.cert
                ))));
            };
            if !sm::verify_package(cert, files.ebdb, &value) {
                return Err(fail(PackageError::Signature(
                    "the signature does not verify".into(),
                )));
            }
            Some((value.cert, value.counter))
        }
    };
    let body = ebdb.body().ok_or_else(|| {
        fail(PackageError::Missing(format!(
            "no <{}> body",
            header.ebd_type
        )))
    })?;
    let request = match header.ebd_type.as_str() {
        "EBM" => {
            let ebm = package::parse_ebm(body).map_err(fail)?;
            let audio = if ebm.msg_type == 2 {
                None
            } else {
                attached_audio(&ebm, &files).map_err(fail)?
            };
            Request::Order {
                ebm: Box::new(ebm),
                audio,
            }
        }
        "EBMStateRequest" => {
            let ebm_id = package::child(body, "EBM")
                .and_then(|e| package::leaf(e, "EBMID"))
                .filter(|id| package::is_ebmid(id))
                .ok_or_else(|| fail(PackageError::Missing("no EBM/EBMID to report on".into())))?;
            Request::StateRequest { ebm_id }
        }
        "OMDRequest" => {
            let omd_type = package::leaf(body, "OMDType")
                .ok_or_else(|| fail(PackageError::Missing("no OMDType".into())))?;
            if !orders::OMD_TYPES.contains(&omd_type.as_str()) {
                return Err(fail(PackageError::Other("不支持的OMDType".into())));
            }
            let params = package::child(body, "Params");
            let time = |name: &str| -> Result<Option<i64>, Box<Refused>> {
                match params
                    .and_then(|p| package::leaf(p, name))
                    .filter(|t| !t.is_empty())
                {
                    None => Ok(None),
                    Some(t) => package::parse_time(&t)
                        .map(Some)
                        .ok_or_else(|| fail(PackageError::Parse(format!("{name} is not a time")))),
                }
            };
            Request::Omd {
                start_ms: time("RptStartTime")?,
                end_ms: time("RptEndTime")?,
                omd_type,
            }
        }
        "ConnectionCheck" => Request::Heartbeat,
        "EBDResponse" => {
            tracing::debug!(
                related = ?header.related_ebdid,
                code = ?package::leaf(body, "ResultCode"),
                "a result notification from the emergency-broadcast platform"
            );
            Request::Receipt
        }
        other => {
            return Err(fail(PackageError::Other(format!(
                "an adaptor does not take {other} packages"
            ))));
        }
    };
    Ok(Checked {
        header,
        signer,
        request,
    })
}

/// Refuses a replay: an EBDID seen before, or a counter not above the certificate's last one.
fn replayed(conn: &Connection, checked: &Checked) -> Result<Option<String>, StoreError> {
    let Some((cert, counter)) = checked.signer else {
        return Ok(None);
    };
    let seen: Option<i64> = conn
        .query_row(
            "SELECT received_ms FROM ebd_seen WHERE ebdid = ?1",
            [&checked.header.ebdid],
            |r| r.get(0),
        )
        .optional()?;
    if seen.is_some() {
        return Ok(Some("this EBDID was received before".into()));
    }
    let last: Option<i64> = conn
        .query_row(
            "SELECT last_counter FROM ebd_counters WHERE cert_sn = ?1",
            [cert.to_string()],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(last) = last
        && i64::from(counter) <= last
    {
        return Ok(Some(format!(
            "the signature counter {counter} is not above the last one from certificate {cert} ({last})"
        )));
    }
    Ok(None)
}

fn remember(conn: &Connection, checked: &Checked, now_ms: i64) -> Result<(), StoreError> {
    let Some((cert, counter)) = checked.signer else {
        return Ok(());
    };
    conn.execute(
        "INSERT INTO ebd_seen (ebdid, ebd_type, src_ebrid, received_ms) VALUES (?1, ?2, ?3, ?4)",
        params![
            checked.header.ebdid,
            checked.header.ebd_type,
            checked.header.src_ebrid,
            now_ms
        ],
    )?;
    conn.execute(
        "INSERT INTO ebd_counters (cert_sn, last_counter, updated_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (cert_sn) DO UPDATE SET last_counter = excluded.last_counter, updated_ms = excluded.updated_ms",
        params![cert.to_string(), i64::from(counter), now_ms],
    )?;
    Ok(())
}

fn audit_refusal(
    rt: &Runtime,
    conn: &Connection,
    action: &str,
    header: Option<&Header>,
    reason: &str,
) -> Result<(), StoreError> {
    let target = header.map_or_else(|| "ebd/unknown".to_string(), |h| format!("ebd/{}", h.ebdid));
    let mut event = Event::new(SYSTEM, action, &target);
    event.detail = json!({
        "reason": reason,
        "ebd_type": header.map(|h| h.ebd_type.clone()),
        "src": header.map(|h| h.src_ebrid.clone()),
    });
    rt.ctx.audit(conn, event)?;
    Ok(())
}

/// What the write job decided.
struct Applied {
    code: u8,
    desc: String,
    follow_up: Option<FollowUp>,
}

fn apply(
    rt: &Runtime,
    conn: &Connection,
    checked: &Checked,
    package_sha: Option<&str>,
    package_len: usize,
    audio_sha: Option<&str>,
) -> Result<Applied, super::orders::OrderError> {
    let now = rt.ctx.now_ms();
    if let Some(why) = replayed(conn, checked)? {
        audit_refusal(rt, conn, "ebd.replay_refused", Some(&checked.header), &why)?;
        return Ok(Applied {
            code: 5,
            desc: format!("{}：重复的数据包 ({why})", package::result_desc(5)),
            follow_up: None,
        });
    }
    remember(conn, checked, now)?;
    let header = &checked.header;
    let reply_url = header.src_url.clone();
    let ok = |follow_up| Applied {
        code: 1,
        desc: package::result_desc(1).into(),
        follow_up,
    };
    let applied = match &checked.request {
        Request::Order { ebm, .. } if ebm.msg_type == 2 => {
            match orders::cancel(rt, conn, ebm, &header.ebdid)? {
                Ok(()) => ok(None),
                Err(why) => Applied {
                    code: 5,
                    desc: format!("{}：{why}", package::result_desc(5)),
                    follow_up: None,
                },
            }
        }
        Request::Order { ebm, audio } => {
            let audio = match (audio, audio_sha) {
                (Some(a), Some(sha)) => Some(orders::AudioRef {
                    sha256: sha.to_string(),
                    mime: a.mime,
                    duration_ms: a.duration_ms,
                    len: a.range.len(),
                }),
                _ => None,
            };
            orders::play(
                rt,
                conn,
                header,
                ebm,
                (package_sha.unwrap_or_default(), package_len),
                audio.as_ref(),
            )?;
            ok(None)
        }
        Request::StateRequest { ebm_id } => ok(Some(FollowUp::State {
            ebm_id: ebm_id.clone(),
            reply_url,
            related: header.ebdid.clone(),
            dest: header.src_ebrid.clone(),
        })),
        Request::Omd {
            omd_type,
            start_ms,
            end_ms,
        } => ok(Some(FollowUp::Omd {
            omd_type: omd_type.clone(),
            start_ms: *start_ms,
            end_ms: *end_ms,
            reply_url,
            related: header.ebdid.clone(),
            dest: header.src_ebrid.clone(),
        })),
        Request::Heartbeat | Request::Receipt => ok(None),
    };
    rt.ids.persist(conn)?;
    Ok(applied)
}

/// Receives one package: its receipt, and the follow-up it asks for (queued for the reporter).
pub async fn receive(rt: &Runtime, archive: axum::body::Bytes) -> Receipt {
    let trust = rt.trust.clone();
    let archive_for_check = archive.clone();
    let checked = tokio::task::spawn_blocking(move || check(&trust, &archive_for_check)).await;
    let receipt = match checked {
        Err(e) => Receipt {
            code: 5,
            desc: format!("{}：{e}", package::result_desc(5)),
            related: None,
            sender: None,
        },
        Ok(Err(refused)) => refused_receipt(rt, refused).await,
        Ok(Ok(checked)) => accepted_receipt(rt, checked, archive).await,
    };
    if let Some(n) = rt.counters.received.get(usize::from(receipt.code)) {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    receipt
}

async fn refused_receipt(rt: &Runtime, refused: Box<Refused>) -> Receipt {
    let code = refused.error.result_code();
    tracing::info!(code, reason = %crate::logging::Untrusted(&refused.error.to_string()), "an emergency-broadcast package was refused");
    if code == 4 {
        // A signature that fails is someone trying, or a platform with a new certificate: either
        // way the people responsible must see it.
        let (rt2, header, reason) = (
            rt.clone(),
            refused.header.clone(),
            refused.error.to_string(),
        );
        if let Err(e) = rt
            .store
            .write(move |conn| {
                audit_refusal(
                    &rt2,
                    conn,
                    "ebd.signature_refused",
                    header.as_ref(),
                    &reason,
                )
            })
            .await
        {
            tracing::warn!(error = %e, "could not audit a refused emergency-broadcast package");
        }
    }
    Receipt {
        code,
        desc: format!("{}：{}", package::result_desc(code), refused.error),
        related: refused.related,
        sender: refused.header.map(|h| h.src_ebrid),
    }
}

async fn accepted_receipt(rt: &Runtime, checked: Checked, archive: axum::body::Bytes) -> Receipt {
    let package_len = archive.len();
    let related = Some(checked.header.ebdid.clone());
    let sender = Some(checked.header.src_ebrid.clone());
    let other = |e: &dyn std::fmt::Display| Receipt {
        code: 5,
        desc: format!("{}：{e}", package::result_desc(5)),
        related: related.clone(),
        sender: sender.clone(),
    };
    // An order keeps its package (for the audit) and its audio as attachments; content-addressed
    // files written before the transaction are collected again if it does not commit.
    let (mut package_sha, mut audio_sha) = (None, None);
    if let Request::Order { ebm, audio } = &checked.request
        && ebm.msg_type != 2
    {
        let blobs = rt.blobs.clone();
        let audio_bytes = audio.as_ref().map(|a| archive.slice(a.range.clone()));
        let stored = tokio::task::spawn_blocking(move || {
            let p = blobs.put(&archive)?;
            let a = audio_bytes.map(|b| blobs.put(&b)).transpose()?;
            Ok::<_, crate::blobs::BlobError>((p, a))
        })
        .await;
        match stored {
            Ok(Ok((p, a))) => {
                package_sha = Some(p);
                audio_sha = a;
            }
            Ok(Err(e)) => return other(&e),
            Err(e) => return other(&e),
        }
    }
    // A failed job is rolled back whole: an order that could not be stored is not remembered as
    // seen either, so the platform's resending it is not refused as a replay.
    let rt2 = rt.clone();
    let result = rt
        .store
        .write(move |conn| {
            apply(
                &rt2,
                conn,
                &checked,
                package_sha.as_deref(),
                package_len,
                audio_sha.as_deref(),
            )
        })
        .await;
    match result {
        Ok(applied) => {
            if let Some(f) = applied.follow_up
                && rt.follow_ups.try_send(f).is_err()
            {
                tracing::warn!("too many platform requests waiting for an answer; one is dropped");
            }
            Receipt {
                code: applied.code,
                desc: applied.desc,
                related,
                sender,
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "an emergency-broadcast order could not be stored");
            other(&"the node could not store the order")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use proptest::prelude::*;

    const EBDID: &str = "10433072300000001010101010000000000000042";
    const RESOURCE: &[u8] = b"a resource whose digest the order names";

    fn ebdb() -> Vec<u8> {
        let digest = hex::encode(sm::sm3_digest(RESOURCE));
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><EBD><EBDVersion>1</EBDVersion><EBDID>{EBDID}</EBDID><EBDType>EBM</EBDType><SRC><EBRID>43307230000000101010101</EBRID></SRC><EBDTime>2026-12-01 10:00:00</EBDTime><EBM><EBMID>433072300000001010101012026120100001</EBMID><MsgBasicInfo><MsgType>1</MsgType><Severity>1</Severity><StartTime>2026-12-01 10:00:00</StartTime><EndTime>2026-12-01 11:00:00</EndTime></MsgBasicInfo><MsgContent><MsgTitle>洪水</MsgTitle><MsgDesc>请立即转移</MsgDesc><AreaCode>330723001000</AreaCode><Auxiliary><AuxiliaryType>1</AuxiliaryType><AuxiliaryDesc>EBDR_note.txt</AuxiliaryDesc><Size>{}</Size><Digest>{digest}</Digest></Auxiliary></MsgContent></EBM></EBD>",
            RESOURCE.len()
        )
        .into_bytes()
    }

    fn package(ebdb: &[u8], value: &str, resource: &[u8]) -> Vec<u8> {
        let ebds = package::write_ebds(EBDID, "x", value);
        tar::write(
            &[
                (&format!("EBDB_{EBDID}.xml"), ebdb),
                ("EBDR_note.txt", resource),
                (&format!("EBDS_EBDB_{EBDID}.xml"), &ebds),
            ],
            0,
        )
    }

    fn setup() -> (Trust, Vec<u8>, String) {
        let key = sm::NodeSmKey::generate().expect("key");
        let cert = sm::Cert::parse(&key.certificate()).expect("cert");
        let ebdb = ebdb();
        let value = key.sign_package(&ebdb, 77);
        (Trust::from_certs(vec![cert]), ebdb, value)
    }

    #[test]
    fn the_untouched_package_verifies_and_names_its_order() {
        let (trust, ebdb, value) = setup();
        let checked = check(&trust, &package(&ebdb, &value, RESOURCE)).expect("verifies");
        assert_eq!(checked.signer.map(|s| s.1), Some(77));
        assert!(matches!(checked.request, Request::Order { ref ebm, .. } if ebm.severity == 1));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn a_single_bit_flipped_in_the_ebdb_the_signature_or_a_digested_resource_never_verifies(
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
            place in 0u8..3,
        ) {
            let (trust, ebdb, value) = setup();
            let flip = |bytes: &mut Vec<u8>| {
                let i = at.index(bytes.len());
                bytes[i] ^= 1 << bit;
            };
            let archive = match place {
                0 => {
                    let mut changed = ebdb.clone();
                    flip(&mut changed);
                    package(&changed, &value, RESOURCE)
                }
                1 => {
                    let mut raw = base64::engine::general_purpose::STANDARD
                        .decode(&value)
                        .expect("b64");
                    flip(&mut raw);
                    let changed = base64::engine::general_purpose::STANDARD.encode(&raw);
                    package(&ebdb, &changed, RESOURCE)
                }
                _ => {
                    let mut changed = RESOURCE.to_vec();
                    flip(&mut changed);
                    package(&ebdb, &value, &changed)
                }
            };
            prop_assert!(check(&trust, &archive).is_err());
        }
    }
}
