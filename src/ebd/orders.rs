//! Platform orders as broadcasts: an EBM becomes a broadcast requested by this node's system, a
//! cancel (MsgType 2) cancels it, and the broadcast's state and receipts become the BrdStateCode the
//! platform is told. Also the bodies of the reports the platform asks for (EBRDTInfo, EBRDTState,
//! EBMBrdLog).
//!
//! Areas: an `AreaCode` is 12 digits with the lower levels zero (`330723000000` the county
//! `330723`, `330723001000` the township `330723001`); a code above this node's area means all of
//! it, one inside it means that part. Codes elsewhere are not this node's: an order naming none of
//! its area is accepted but reported failed here.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};
use township_sync::AreaCode;
use uuid::Uuid;

use super::Runtime;
use super::package::{Ebm, Header};
use crate::auth::actor::Actor;
use crate::broadcast::{self, Action, BroadcastError, Content, Mode, NewBroadcast, Priority};
use crate::cap::xml::Writer;
use crate::rules::eval::Level;
use crate::store::StoreError;

/// The reports an `OMDRequest` may ask this node for.
pub const OMD_TYPES: &[&str] = &["EBRDTInfo", "EBRDTState", "EBMBrdLog"];

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broadcast(#[from] BroadcastError),
}

impl From<rusqlite::Error> for OrderError {
    fn from(e: rusqlite::Error) -> Self {
        OrderError::Store(e.into())
    }
}

/// BrdStateCode: 0 未处理, 1 等待播发, 2 播发中, 3 播发成功, 4 播发失败, 5 播发取消.
pub fn state_desc(code: i64) -> &'static str {
    match code {
        1 => "等待播发",
        2 => "播发中",
        3 => "播发成功",
        4 => "播发失败",
        5 => "播发取消",
        _ => "未处理",
    }
}

/// The part of the country a 12-digit code names, as a prefix: province 2 digits, city 4, county
/// 6, township 9, village 12.
pub fn area_prefix(code: &str) -> &str {
    let zeros = code.len() - code.trim_end_matches('0').len();
    let keep = match zeros {
        10.. => 2,
        8..=9 => 4,
        6..=7 => 6,
        3..=5 => 9,
        _ => 12,
    };
    &code[..keep.min(code.len())]
}

/// The areas of this node an order's codes name.
pub fn target_areas(node_area: &AreaCode, codes: &[String]) -> Vec<AreaCode> {
    let mut out: Vec<AreaCode> = Vec::new();
    for code in codes {
        let prefix = area_prefix(code);
        let area = if node_area.as_str().starts_with(prefix) {
            Some(node_area.clone())
        } else if prefix.starts_with(node_area.as_str()) {
            prefix.parse::<AreaCode>().ok()
        } else {
            None
        };
        if let Some(a) = area
            && !out.iter().any(|o| o.contains(&a))
        {
            out.retain(|o| !a.contains(o));
            out.push(a);
        }
    }
    out
}

fn level(severity: i64) -> Priority {
    match severity {
        1 => Priority::Warning(Level::Red),
        2 => Priority::Warning(Level::Orange),
        3 => Priority::Warning(Level::Yellow),
        4 => Priority::Warning(Level::Blue),
        _ => Priority::Routine,
    }
}

/// An attachment stored for an order, with what the audio check found.
#[derive(Debug, Clone)]
pub struct AudioRef {
    pub sha256: String,
    pub mime: &'static str,
    pub duration_ms: i64,
    pub len: usize,
}

fn insert_order(
    conn: &Connection,
    header: &Header,
    ebm: &Ebm,
    broadcast: Option<Uuid>,
    package_sha: &str,
    (state, desc): (i64, &str),
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO ebd_orders (ebm_id, ebdid, broadcast_id, msg_type, src_ebrid, reply_url,
             package_sha256, title, received_ms, reported_state, state, state_desc, state_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, NULL, ?10, ?11, ?9)",
        params![
            ebm.ebm_id,
            header.ebdid,
            broadcast.map(|b| b.to_string()),
            i64::from(ebm.msg_type),
            header.src_ebrid,
            header.src_url,
            package_sha,
            if ebm.title.is_empty() {
                &ebm.desc
            } else {
                &ebm.title
            },
            now,
            state,
            desc,
        ],
    )?;
    Ok(())
}

/// The origin fields an order's broadcast keeps in its signed request.
fn origin(header: &Header, ebm: &Ebm, package_sha: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("ebd_ebm_id".to_string(), ebm.ebm_id.clone()),
        ("ebd_ebdid".to_string(), header.ebdid.clone()),
        ("ebd_src".to_string(), header.src_ebrid.clone()),
        ("ebd_package".to_string(), package_sha.to_string()),
    ])
}

/// Turns a verified EBM (MsgType 1, 3, 4 or 5) into a broadcast on this node's zones in its areas.
/// An EBMID already here is not ordered twice (a platform resending the order with a new EBDID).
pub fn play(
    rt: &Runtime,
    conn: &Connection,
    header: &Header,
    ebm: &Ebm,
    (package_sha, package_len): (&str, usize),
    audio: Option<&AudioRef>,
) -> Result<Option<Uuid>, OrderError> {
    let known: Option<Option<String>> = conn
        .query_row(
            "SELECT broadcast_id FROM ebd_orders WHERE ebm_id = ?1",
            [&ebm.ebm_id],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(existing) = known {
        return Ok(existing.and_then(|b| Uuid::parse_str(&b).ok()));
    }
    let now = rt.ctx.now_ms();
    // The package is kept for the audit whether or not anything of this node's is named.
    crate::blobs::register(conn, package_sha, package_len, "application/x-tar", now)?;
    let targets = target_areas(&rt.ctx.area, &ebm.area_codes);
    let Some(scope) = broadcast::common_area(&targets) else {
        insert_order(
            conn,
            header,
            ebm,
            None,
            package_sha,
            (4, "播发失败：AreaCode不在本适配器的区域内"),
            now,
        )?;
        return Ok(None);
    };
    let text: String = if ebm.desc.is_empty() {
        &ebm.title
    } else {
        &ebm.desc
    }
    .chars()
    .take(broadcast::MAX_TEXT)
    .collect();
    let start_ms = ebm.start_ms.unwrap_or(now);
    let content = Content {
        text,
        zones: targets.iter().map(ToString::to_string).collect(),
        mode: if ebm.msg_type == 1 {
            Mode::Live
        } else {
            Mode::Exercise
        },
        level: level(ebm.severity),
        repeat: 1,
        start_ms,
        expires_ms: ebm
            .end_ms
            .unwrap_or(start_ms + broadcast::DEFAULT_VALIDITY_MS),
        warning: None,
        corrects: None,
        needs_second: false,
        rule: None,
        schedule: Vec::new(),
    };
    let system = Actor::system(rt.ctx.area.clone());
    let id = broadcast::create(
        conn,
        &rt.ctx,
        &system,
        NewBroadcast {
            scope,
            content,
            origin: origin(header, ebm, package_sha),
        },
    )?;
    if let Some(audio) = audio {
        crate::blobs::register(conn, &audio.sha256, audio.len, audio.mime, now)?;
        let mut data = BTreeMap::new();
        data.insert("sha256".to_string(), audio.sha256.clone());
        data.insert("mime".to_string(), audio.mime.to_string());
        data.insert("duration_ms".to_string(), audio.duration_ms.to_string());
        broadcast::act(conn, &rt.ctx, &system, id, Action::Audio, data)?;
    }
    insert_order(
        conn,
        header,
        ebm,
        Some(id),
        package_sha,
        (1, state_desc(1)),
        now,
    )?;
    Ok(Some(id))
}

/// Cancels the broadcast of the EBM a MsgType 2 names (RelatedInfo/EBMID, else its own EBMID).
/// `Ok(Err(why))`: nothing to cancel.
pub fn cancel(
    rt: &Runtime,
    conn: &Connection,
    ebm: &Ebm,
    ebdid: &str,
) -> Result<Result<(), String>, OrderError> {
    let target = ebm.related_ebm_id.as_deref().unwrap_or(&ebm.ebm_id);
    let found: Option<Option<String>> = conn
        .query_row(
            "SELECT broadcast_id FROM ebd_orders WHERE ebm_id = ?1",
            [target],
            |r| r.get(0),
        )
        .optional()?;
    let Some(found) = found else {
        return Ok(Err(format!("未找到要取消的EBM {target}")));
    };
    let Some(id) = found.and_then(|b| Uuid::parse_str(&b).ok()) else {
        // Nothing was ordered here for it: cancelled as far as this node goes.
        return Ok(Ok(()));
    };
    let system = Actor::system(rt.ctx.area.clone());
    // The cancel names the platform message that asked for it, like the request does.
    let mut data = BTreeMap::new();
    data.insert("ebd_ebm_id".to_string(), ebm.ebm_id.clone());
    data.insert("ebd_ebdid".to_string(), ebdid.to_string());
    match broadcast::act(conn, &rt.ctx, &system, id, Action::Cancel, data) {
        Ok(_) => Ok(Ok(())),
        // Already over (played, refused or cancelled): the state report says which.
        Err(BroadcastError::Conflict(_)) => Ok(Ok(())),
        Err(e) => Err(e.into()),
    }
}

/// The BrdStateCode a broadcast's state and receipts come to, with its description.
fn code_of(conn: &Connection, broadcast: Uuid) -> Result<Option<(i64, String)>, StoreError> {
    let Some(state) = broadcast::state_of(conn, broadcast)? else {
        return Ok(None);
    };
    let code = match state.as_str() {
        "playing" => 2,
        "finished" => {
            let receipts = broadcast::receipts::for_broadcast(conn, broadcast)?;
            if receipts
                .iter()
                .any(|r| matches!(r.state.as_str(), "finished" | "simulated"))
            {
                3
            } else {
                4
            }
        }
        "cancelled" => 5,
        "refused" => 4,
        _ => 1,
    };
    Ok(Some((code, state_desc(code).to_string())))
}

/// The open orders whose state moved: (EBMID, new BrdStateCode, its description).
pub fn moved_states(conn: &Connection) -> Result<Vec<(String, i64, String)>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT ebm_id, broadcast_id, state FROM ebd_orders WHERE state < 3 AND broadcast_id IS NOT NULL",
    )?;
    let open: Vec<(String, String, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut moved = Vec::new();
    for (ebm_id, broadcast, state) in open {
        let Ok(id) = Uuid::parse_str(&broadcast) else {
            continue;
        };
        if let Some((code, desc)) = code_of(conn, id)?
            && code != state
        {
            moved.push((ebm_id, code, desc));
        }
    }
    Ok(moved)
}

/// Records the states [`moved_states`] found.
pub fn set_states(
    conn: &Connection,
    moved: &[(String, i64, String)],
    now_ms: i64,
) -> Result<(), StoreError> {
    for (ebm_id, code, desc) in moved {
        conn.execute(
            "UPDATE ebd_orders SET state = ?2, state_desc = ?3, state_ms = ?4 WHERE ebm_id = ?1",
            params![ebm_id, code, desc, now_ms],
        )?;
    }
    Ok(())
}

/// Whether any order is still open or has a state the platform has not acknowledged.
pub fn needs_work(conn: &Connection) -> Result<bool, StoreError> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM ebd_orders WHERE reported_state IS NOT state
             OR (state < 3 AND broadcast_id IS NOT NULL) LIMIT 1",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// An order whose state the platform has not acknowledged yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreported {
    pub ebm_id: String,
    pub ebdid: String,
    pub src_ebrid: String,
    pub reply_url: Option<String>,
    pub state: i64,
    pub desc: String,
}

pub fn unreported(conn: &Connection) -> Result<Vec<Unreported>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT ebm_id, ebdid, src_ebrid, reply_url, state, state_desc FROM ebd_orders
         WHERE reported_state IS NOT state ORDER BY state_ms LIMIT 64",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(Unreported {
            ebm_id: r.get(0)?,
            ebdid: r.get(1)?,
            src_ebrid: r.get(2)?,
            reply_url: r.get(3)?,
            state: r.get(4)?,
            desc: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn mark_reported(conn: &Connection, ebm_id: &str, state: i64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE ebd_orders SET reported_state = ?2 WHERE ebm_id = ?1",
        params![ebm_id, state],
    )?;
    Ok(())
}

/// An order's current state, for an `EBMStateRequest`.
pub fn state_for(conn: &Connection, ebm_id: &str) -> Result<Option<(i64, String)>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT state, state_desc FROM ebd_orders WHERE ebm_id = ?1",
            [ebm_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}

/// The `EBMStateResponse` body.
pub fn state_response_body(
    w: &mut Writer,
    ebm_id: &str,
    code: i64,
    desc: &str,
    now_ms: i64,
    ebrid: &str,
) {
    w.leaf("RptTime", &super::package::format_time(now_ms))
        .open("EBM", &[])
        .leaf("EBMID", ebm_id)
        .close()
        .leaf("BrdStateCode", &code.to_string())
        .leaf("BrdStateDesc", desc)
        .open("ResBrdInfo", &[])
        .open("ResBrdItem", &[])
        .open("EBRAS", &[])
        .leaf("EBRID", ebrid)
        .close()
        .close()
        .close();
}

/// A loudspeaker output as the platform's terminal (EBRDT), with a 23-digit id made from its
/// zone's area and its place among this node's outputs: level, area (12 digits), `0314` (应急广播大
/// 喇叭系统), `01`, `04` (终端), a two-digit number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminal {
    pub ebrid: String,
    pub name: String,
    pub state_code: u8,
    pub state_desc: &'static str,
}

pub fn terminals(rt: &Runtime, now_ms: i64) -> Vec<Terminal> {
    let mut out = Vec::new();
    let mut n = 0u32;
    for zone in &rt.outputs.zones {
        for output in &zone.outputs {
            n += 1;
            let level = match zone.area.len() {
                6 => 4,
                9 => 5,
                _ => 6,
            };
            let area = format!("{:0<12}", zone.area);
            let health = rt.outputs.health(output, now_ms);
            let (state_code, state_desc) = match health.status.as_str() {
                "ok" => (1, "运行正常"),
                "error" => (3, "故障"),
                "offline" => (2, "停止运行"),
                _ => (1, "运行正常（未使用）"),
            };
            out.push(Terminal {
                ebrid: format!("{level}{area}03140104{:02}", n.min(99)),
                name: format!("{} {}", zone.name, output),
                state_code,
                state_desc,
            });
        }
    }
    out
}

/// The body of an `EBRDTInfo` or `EBRDTState` report.
pub fn terminal_report_body(w: &mut Writer, rt: &Runtime, info: bool, now_ms: i64) {
    let rpt = super::package::format_time(now_ms);
    w.open("Params", &[]).leaf("RptType", "Full").close();
    for t in terminals(rt, now_ms) {
        w.open("EBRDT", &[]).leaf("RptTime", &rpt);
        if info {
            w.leaf("RptType", "Sync")
                .open("RelatedEBRPS", &[])
                .leaf("EBRID", &rt.ebrid)
                .close()
                .leaf("EBRID", &t.ebrid)
                .leaf("EBRName", &t.name);
        } else {
            w.leaf("EBRID", &t.ebrid)
                .leaf("StateCode", &t.state_code.to_string())
                .leaf("StateDesc", t.state_desc);
        }
        w.close();
    }
}

/// One order for the broadcast log.
#[derive(Debug, Clone)]
pub struct LogItem {
    pub ebm_id: String,
    pub title: String,
    pub state: i64,
    pub desc: String,
}

pub fn log_items(
    conn: &Connection,
    start_ms: Option<i64>,
    end_ms: Option<i64>,
) -> Result<Vec<LogItem>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT ebm_id, title, state, state_desc FROM ebd_orders
         WHERE received_ms >= ?1 AND received_ms <= ?2 ORDER BY received_ms LIMIT 1000",
    )?;
    let rows = stmt.query_map(
        params![start_ms.unwrap_or(0), end_ms.unwrap_or(i64::MAX)],
        |r| {
            Ok(LogItem {
                ebm_id: r.get(0)?,
                title: r.get(1)?,
                state: r.get(2)?,
                desc: r.get(3)?,
            })
        },
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn log_body(w: &mut Writer, items: &[LogItem], start_ms: Option<i64>, end_ms: Option<i64>) {
    w.open("Params", &[]);
    if let Some(s) = start_ms {
        w.leaf("RptStartTime", &super::package::format_time(s));
    }
    if let Some(e) = end_ms {
        w.leaf("RptEndTime", &super::package::format_time(e));
    }
    w.leaf("RptType", "Full").close();
    for item in items {
        w.open("EBMBrdItem", &[])
            .open("EBM", &[])
            .leaf("EBMID", &item.ebm_id)
            .open("MsgContent", &[])
            .leaf("LanguageCode", "zho")
            .leaf("MsgTitle", &item.title)
            .close()
            .close()
            .leaf("BrdStateCode", &item.state.to_string())
            .leaf("BrdStateDesc", &item.desc)
            .close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_codes_name_this_nodes_areas() {
        let township: AreaCode = "330723001".parse().expect("area");
        let codes = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(area_prefix("330723000000"), "330723");
        assert_eq!(area_prefix("330723001000"), "330723001");
        assert_eq!(area_prefix("330000000000"), "33");
        assert_eq!(area_prefix("330700000000"), "3307");
        assert_eq!(area_prefix("330723001002"), "330723001002");
        // The county and the province mean all of the township.
        assert_eq!(
            target_areas(&township, &codes(&["330723000000"])),
            vec![township.clone()]
        );
        assert_eq!(
            target_areas(&township, &codes(&["330000000000"])),
            vec![township.clone()]
        );
        // A village inside it means that village; another township means nothing here.
        assert_eq!(
            target_areas(&township, &codes(&["330723001002", "330723002000"])),
            vec!["330723001002".parse::<AreaCode>().expect("area")]
        );
        // A village and the whole township: the township.
        assert_eq!(
            target_areas(&township, &codes(&["330723001002", "330723001000"])),
            vec![township.clone()]
        );
        assert!(target_areas(&township, &codes(&["320582000000"])).is_empty());
    }

    #[test]
    fn severities_are_the_four_colours_and_the_rest_routine() {
        assert_eq!(level(1), Priority::Warning(Level::Red));
        assert_eq!(level(4), Priority::Warning(Level::Blue));
        assert_eq!(level(0), Priority::Routine);
        assert_eq!(level(15), Priority::Routine);
    }
}
