//! EBD packages as data: reading the EBDB and EBDS files of a received package, and making the
//! files of the packages this node sends. No I/O and no database here.
//!
//! Reading goes through the one hostile-input XML reader ([`crate::cap::dom`]: no DTDs, no entities
//! beyond the predefined ones, bounded size and depth). Element names are matched without
//! namespaces (the roots carry useless `xmlns:xs`/`xsi`/`xsd` declarations); ids are opaque
//! strings checked only for their shape; both `SendTime` (2018) and `SentTime` (2016/17) are read.
//! Writing produces the 2018 element set, UTF-8 without a BOM, and the bytes written are the bytes
//! signed (a package is never re-serialised).

use crate::cap::dom::{self, Element};
use crate::cap::xml::Writer;

use super::tar;

/// Why a package cannot be processed, with the EBDResponse ResultCode it earns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackageError {
    /// ResultCode 2: 接收解析失败.
    #[error("{0}")]
    Parse(String),
    /// ResultCode 3: 数据内容缺失.
    #[error("{0}")]
    Missing(String),
    /// ResultCode 4: 签名验证失败.
    #[error("{0}")]
    Signature(String),
    /// ResultCode 5: 其他错误.
    #[error("{0}")]
    Other(String),
}

impl PackageError {
    pub fn result_code(&self) -> u8 {
        match self {
            PackageError::Parse(_) => 2,
            PackageError::Missing(_) => 3,
            PackageError::Signature(_) => 4,
            PackageError::Other(_) => 5,
        }
    }
}

fn parse_err(s: impl Into<String>) -> PackageError {
    PackageError::Parse(s.into())
}

fn missing(s: impl Into<String>) -> PackageError {
    PackageError::Missing(s.into())
}

/// Every EBDType the README lists.
pub const EBD_TYPES: &[&str] = &[
    "EBM",
    "EBMStateRequest",
    "EBMStateResponse",
    "OMDRequest",
    "EBRPSInfo",
    "EBRSTInfo",
    "EBRASInfo",
    "EBRBSInfo",
    "EBRDTInfo",
    "EBMBrdLog",
    "EBRPSState",
    "EBRASState",
    "EBRBSState",
    "EBRDTState",
    "ConnectionCheck",
    "EBDResponse",
];

/// The types that may come without a signature: heartbeats and receipts (GD/J 083-2018).
pub fn may_be_unsigned(ebd_type: &str) -> bool {
    matches!(ebd_type, "ConnectionCheck" | "EBDResponse")
}

/// An EBDID: a two-digit type and a source EBRID (18 or 23 digits) and a 16-digit sequence.
pub fn is_ebdid(s: &str) -> bool {
    matches!(s.len(), 36 | 41) && s.bytes().all(|b| b.is_ascii_digit())
}

/// An EBRID, 18 digits (2016/17) or 23 (2018).
pub fn is_ebrid(s: &str) -> bool {
    matches!(s.len(), 18 | 23) && s.bytes().all(|b| b.is_ascii_digit())
}

/// An EBMID is an opaque id: malformed lengths occur in the wild, so only its characters count.
pub fn is_ebmid(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// `YYYY-MM-DD hh:mm:ss`, Beijing time, as milliseconds since the epoch.
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() != 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b' ' | b'T')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let digits = [0..4, 5..7, 8..10, 11..13, 14..16, 17..19];
    if !digits
        .iter()
        .all(|r| b[r.clone()].iter().all(u8::is_ascii_digit))
    {
        return None;
    }
    crate::clock::parse_rfc3339_offset(&format!("{}T{}+08:00", &s[..10], &s[11..]))
}

/// Milliseconds since the epoch as `YYYY-MM-DD hh:mm:ss`, Beijing time.
pub fn format_time(ms: i64) -> String {
    let t = crate::clock::rfc3339_china(ms);
    format!("{} {}", &t[..10], &t[11..19])
}

/// Text of the first child element named `name` (local name), trimmed.
pub(crate) fn leaf(el: &Element, name: &str) -> Option<String> {
    child(el, name).map(|c| c.text().trim().to_string())
}

pub(crate) fn child<'a>(el: &'a Element, name: &str) -> Option<&'a Element> {
    el.elements().find(|e| e.local() == name)
}

pub(crate) fn children<'a>(
    el: &'a Element,
    name: &'a str,
) -> impl Iterator<Item = &'a Element> + 'a {
    el.elements().filter(move |e| e.local() == name)
}

/// The EBD header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub ebdid: String,
    pub ebd_type: String,
    pub src_ebrid: String,
    pub src_url: Option<String>,
    pub dest_ebrid: Option<String>,
    pub ebd_time_ms: i64,
    pub related_ebdid: Option<String>,
}

/// A parsed EBDB: its header and the body element named like its type.
#[derive(Debug)]
pub struct Ebdb {
    pub header: Header,
    pub(crate) root: Element,
}

impl Ebdb {
    pub(crate) fn body(&self) -> Option<&Element> {
        child(&self.root, &self.header.ebd_type)
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, PackageError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    std::str::from_utf8(bytes).map_err(|_| parse_err("the EBDB is not UTF-8"))
}

/// Reads an EBDB file.
pub fn parse_ebdb(bytes: &[u8]) -> Result<Ebdb, PackageError> {
    let doc = dom::parse(utf8(bytes)?).map_err(|e| parse_err(format!("EBDB: {}", e.0)))?;
    let root = doc.root;
    if root.local() != "EBD" {
        return Err(parse_err(format!(
            "the EBDB's root is <{}>, not <EBD>",
            root.name
        )));
    }
    let ebdid = leaf(&root, "EBDID").ok_or_else(|| missing("the EBDB has no EBDID"))?;
    if !is_ebdid(&ebdid) {
        return Err(parse_err("the EBDID is not 36 or 41 digits"));
    }
    let ebd_type = leaf(&root, "EBDType").ok_or_else(|| missing("the EBDB has no EBDType"))?;
    if !EBD_TYPES.contains(&ebd_type.as_str()) {
        return Err(parse_err(format!(
            "unknown EBDType `{}`",
            ebd_type.chars().take(40).collect::<String>()
        )));
    }
    let src = child(&root, "SRC").ok_or_else(|| missing("the EBDB has no SRC"))?;
    let src_ebrid = leaf(src, "EBRID").ok_or_else(|| missing("the EBDB has no SRC/EBRID"))?;
    if !is_ebrid(&src_ebrid) {
        return Err(parse_err("SRC/EBRID is not 18 or 23 digits"));
    }
    let src_url = leaf(src, "URL").filter(|u| !u.is_empty());
    let dest_ebrid = child(&root, "DEST")
        .and_then(|d| leaf(d, "EBRID"))
        .filter(|d| !d.is_empty());
    if dest_ebrid.as_deref().is_some_and(|d| !is_ebrid(d)) {
        return Err(parse_err("DEST/EBRID is not 18 or 23 digits"));
    }
    let time = leaf(&root, "EBDTime").ok_or_else(|| missing("the EBDB has no EBDTime"))?;
    let ebd_time_ms =
        parse_time(&time).ok_or_else(|| parse_err("EBDTime is not YYYY-MM-DD hh:mm:ss"))?;
    let related_ebdid = child(&root, "RelatedEBD")
        .and_then(|r| leaf(r, "EBDID"))
        .filter(|r| !r.is_empty());
    if related_ebdid.as_deref().is_some_and(|r| !is_ebdid(r)) {
        return Err(parse_err("RelatedEBD/EBDID is not 36 or 41 digits"));
    }
    let header = Header {
        ebdid,
        ebd_type,
        src_ebrid,
        src_url,
        dest_ebrid,
        ebd_time_ms,
        related_ebdid,
    };
    let ebdb = Ebdb { header, root };
    if ebdb.body().is_none() {
        return Err(missing(format!(
            "the EBDB has no <{}> body",
            ebdb.header.ebd_type
        )));
    }
    Ok(ebdb)
}

/// The parts of an EBDS file that count: the EBDID it signs and the signature value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ebds {
    pub related_ebdid: Option<String>,
    pub signature_value: String,
}

pub fn parse_ebds(bytes: &[u8]) -> Result<Ebds, PackageError> {
    let bad = |s: String| PackageError::Signature(s);
    let text = std::str::from_utf8(bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes))
        .map_err(|_| bad("the EBDS is not UTF-8".into()))?;
    let doc = dom::parse(text).map_err(|e| bad(format!("EBDS: {}", e.0)))?;
    if doc.root.local() != "Signature" {
        return Err(bad("the EBDS's root is not <Signature>".into()));
    }
    let related_ebdid = child(&doc.root, "RelatedEBD").and_then(|r| leaf(r, "EBDID"));
    let signature_value = leaf(&doc.root, "SignatureValue")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| bad("the EBDS has no SignatureValue".into()))?;
    Ok(Ebds {
        related_ebdid,
        signature_value,
    })
}

/// The files of a received package, found by prefix.
#[derive(Debug)]
pub struct Files<'a> {
    pub ebdb_name: String,
    pub ebdb: &'a [u8],
    pub ebds: Option<&'a [u8]>,
    pub resources: Vec<tar::Member<'a>>,
}

/// Sorts a package's members: exactly one `EBDB_*`, at most one `EBDS_EBDB_*`, the rest resources.
pub fn sort_members<'a>(members: Vec<tar::Member<'a>>) -> Result<Files<'a>, PackageError> {
    let mut ebdb: Option<(String, &[u8])> = None;
    let mut ebds: Option<&[u8]> = None;
    let mut resources = Vec::new();
    for m in members {
        if m.name.starts_with("EBDS_") {
            if ebds.replace(m.bytes).is_some() {
                return Err(parse_err("the package holds two EBDS files"));
            }
        } else if m.name.starts_with("EBDB_") {
            if ebdb.is_some() {
                return Err(parse_err("the package holds two EBDB files"));
            }
            ebdb = Some((m.name, m.bytes));
        } else {
            resources.push(m);
        }
    }
    let (ebdb_name, ebdb) = ebdb.ok_or_else(|| missing("the package holds no EBDB file"))?;
    Ok(Files {
        ebdb_name,
        ebdb,
        ebds,
        resources,
    })
}

/// One `Auxiliary` of an EBM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auxiliary {
    pub kind: String,
    pub desc: String,
    pub size: Option<u64>,
    pub digest: Option<String>,
}

/// An EBM body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ebm {
    pub ebm_id: String,
    pub related_ebm_id: Option<String>,
    pub msg_type: u8,
    pub sender_name: String,
    pub sender_code: String,
    pub event_type: String,
    pub severity: i64,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    pub title: String,
    pub desc: String,
    pub area_codes: Vec<String>,
    pub auxiliaries: Vec<Auxiliary>,
}

fn time_field(info: &Element, name: &str) -> Result<Option<i64>, PackageError> {
    match leaf(info, name).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => parse_time(&t)
            .map(Some)
            .ok_or_else(|| parse_err(format!("{name} is not YYYY-MM-DD hh:mm:ss"))),
    }
}

pub(crate) fn parse_ebm(body: &Element) -> Result<Ebm, PackageError> {
    let ebm_id = leaf(body, "EBMID").ok_or_else(|| missing("the EBM has no EBMID"))?;
    if !is_ebmid(&ebm_id) {
        return Err(parse_err("the EBMID is malformed"));
    }
    let related_ebm_id = child(body, "RelatedInfo")
        .or_else(|| child(body, "RelatedEBM"))
        .and_then(|r| leaf(r, "EBMID"))
        .filter(|r| !r.is_empty());
    if related_ebm_id.as_deref().is_some_and(|r| !is_ebmid(r)) {
        return Err(parse_err("RelatedInfo/EBMID is malformed"));
    }
    let info = child(body, "MsgBasicInfo").ok_or_else(|| missing("the EBM has no MsgBasicInfo"))?;
    let msg_type = leaf(info, "MsgType")
        .ok_or_else(|| missing("the EBM has no MsgType"))?
        .parse::<u8>()
        .ok()
        .filter(|t| (1..=5).contains(t))
        .ok_or_else(|| parse_err("MsgType is not 1 to 5"))?;
    let severity = match leaf(info, "Severity").filter(|s| !s.is_empty()) {
        None => 0,
        Some(s) => s
            .parse::<i64>()
            .map_err(|_| parse_err("Severity is not a number"))?,
    };
    // Read and checked when present, whichever spelling; neither is needed to play.
    time_field(info, "SendTime")?;
    time_field(info, "SentTime")?;
    let start_ms = time_field(info, "StartTime")?;
    let end_ms = time_field(info, "EndTime")?;
    if let (Some(s), Some(e)) = (start_ms, end_ms)
        && e < s
    {
        return Err(parse_err("EndTime is before StartTime"));
    }
    let text =
        |el: Option<&Element>, name: &str| el.and_then(|e| leaf(e, name)).unwrap_or_default();
    let content = child(body, "MsgContent");
    if msg_type != 2 && content.is_none() {
        return Err(missing("the EBM has no MsgContent"));
    }
    let area_codes: Vec<String> = text(content, "AreaCode")
        .split([',', '，', ';', ' '])
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(String::from)
        .collect();
    if area_codes
        .iter()
        .any(|c| c.len() != 12 || !c.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(parse_err("an AreaCode is not 12 digits"));
    }
    if msg_type != 2 && area_codes.is_empty() {
        return Err(missing("the EBM has no AreaCode"));
    }
    let auxiliaries = content
        .map(|c| {
            children(c, "Auxiliary")
                .map(|a| {
                    let size = match leaf(a, "Size").filter(|s| !s.is_empty()) {
                        None => None,
                        Some(s) => Some(
                            s.parse::<u64>()
                                .map_err(|_| parse_err("an Auxiliary Size is not a number"))?,
                        ),
                    };
                    Ok(Auxiliary {
                        kind: leaf(a, "AuxiliaryType").unwrap_or_default(),
                        desc: leaf(a, "AuxiliaryDesc").unwrap_or_default(),
                        size,
                        digest: leaf(a, "Digest").filter(|d| !d.is_empty()),
                    })
                })
                .collect::<Result<Vec<_>, PackageError>>()
        })
        .transpose()?
        .unwrap_or_default();
    Ok(Ebm {
        ebm_id,
        related_ebm_id,
        msg_type,
        sender_name: text(Some(info), "SenderName"),
        sender_code: text(Some(info), "SenderCode"),
        event_type: text(Some(info), "EventType"),
        severity,
        start_ms,
        end_ms,
        title: text(content, "MsgTitle"),
        desc: text(content, "MsgDesc"),
        area_codes,
        auxiliaries,
    })
}

/// The header of a package this node sends.
#[derive(Debug, Clone)]
pub struct OutHeader<'a> {
    pub ebdid: &'a str,
    pub ebd_type: &'static str,
    pub src_ebrid: &'a str,
    pub src_url: Option<&'a str>,
    pub dest_ebrid: Option<&'a str>,
    pub time_ms: i64,
    pub related_ebdid: Option<&'a str>,
}

/// An EBDB file: the declaration, the header, and the body `body` writes inside `<EBDType>`.
pub fn write_ebdb(header: &OutHeader<'_>, body: impl FnOnce(&mut Writer)) -> Vec<u8> {
    let mut w = Writer::new();
    w.open("EBD", &[("xmlns:xs", "http://www.w3.org/2001/XMLSchema")])
        .leaf("EBDVersion", "1")
        .leaf("EBDID", header.ebdid)
        .leaf("EBDType", header.ebd_type)
        .open("SRC", &[])
        .leaf("EBRID", header.src_ebrid);
    if let Some(url) = header.src_url {
        w.leaf("URL", url);
    }
    w.close();
    if let Some(dest) = header.dest_ebrid {
        w.open("DEST", &[]).leaf("EBRID", dest).close();
    }
    w.leaf("EBDTime", &format_time(header.time_ms));
    if let Some(related) = header.related_ebdid {
        w.open("RelatedEBD", &[]).leaf("EBDID", related).close();
    }
    w.open(header.ebd_type, &[]);
    body(&mut w);
    w.close();
    let mut out = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n".to_vec();
    out.extend_from_slice(w.finish().as_bytes());
    out
}

/// An EBDS file in the 2018 element set.
pub fn write_ebds(ebdid: &str, cert_sn: &str, signature_value: &str) -> Vec<u8> {
    let mut w = Writer::new();
    w.open("Signature", &[])
        .leaf("Version", "1")
        .open("RelatedEBD", &[])
        .leaf("EBDID", ebdid)
        .close()
        .leaf("CertSN", cert_sn)
        .leaf("SignatureAlgorithm", "SM2-SM3")
        .leaf("SignatureValue", signature_value);
    let mut out = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n".to_vec();
    out.extend_from_slice(w.finish().as_bytes());
    out
}

/// The `EBDResponse` body.
pub fn response_body(w: &mut Writer, code: u8, desc: &str) {
    w.leaf("ResultCode", &code.to_string())
        .leaf("ResultDesc", desc);
}

/// The Chinese description of a ResultCode, as the platforms word it.
pub fn result_desc(code: u8) -> &'static str {
    match code {
        0 => "收到数据未处理",
        1 => "接收解析及数据校验成功",
        2 => "接收解析失败",
        3 => "数据内容缺失",
        4 => "签名验证失败",
        _ => "其他错误",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(name: &str) -> Vec<u8> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/ebd");
        std::fs::read(dir.join(name)).expect("shared EBD sample")
    }

    #[test]
    fn the_real_samples_parse() {
        let ebdb = parse_ebdb(&sample(
            "01_EBM_play_2017JS_EBDB_100102320000000000010000000000097264.xml",
        ))
        .expect("EBM");
        assert_eq!(ebdb.header.ebd_type, "EBM");
        assert_eq!(ebdb.header.src_ebrid, "010232000000000001");
        let ebm = parse_ebm(ebdb.body().expect("body")).expect("ebm");
        assert_eq!(ebm.ebm_id, "010232000000000001201711030053");
        assert_eq!(ebm.msg_type, 1);
        assert_eq!(ebm.severity, 4);
        assert_eq!(ebm.area_codes, vec!["320582000000".to_string()]);
        assert_eq!(ebm.auxiliaries[0].size, Some(3_242_655));
        assert_eq!(
            ebm.start_ms.map(format_time).as_deref(),
            Some("2017-11-03 11:06:31")
        );
        for name in [
            "08_ConnectionCheck_2018LS_EBDB_010103331124000000010000000000000000.xml",
            "10_ConnectionCheck_2018fmt_EBDB_01450011600000003140102010000000000000000.xml",
            "11_ConnectionCheck_2019YN_EBDB_01436078100000003140101010000000000000000.xml",
            "12_EBMStateResponse_2018_EBDB_10450011600000003140102010000000000000005.xml",
            "13_EBMStateResponse_2019_EBDB_10450011600000003140102010000000000000195.xml",
            "14_EBMStateResponse_2019YN_EBDB_10453262500000003140100000000000000000151.xml",
            "16_EBMBrdLog_2018_EBDB_10450011600000003140102010000000000000011.xml",
            "17_EBRDTState_2019YN_EBDB_10453262500000003140100000000000000000154.xml",
        ] {
            let parsed = parse_ebdb(&sample(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(parsed.body().is_some(), "{name}");
        }
        let ebds = parse_ebds(&sample(
            "15_EBMStateResponse_2019YN_EBDS_EBDB_10453262500000003140100000000000000000151.xml",
        ))
        .expect("ebds");
        assert_eq!(
            ebds.related_ebdid.as_deref(),
            Some("10453262500000003140100000000000000000151")
        );
    }

    #[test]
    fn what_this_node_writes_reads_back() {
        let xml = write_ebdb(
            &OutHeader {
                ebdid: "10433072300000003140102010000000000000001",
                ebd_type: "EBDResponse",
                src_ebrid: "43307230000000314010201",
                src_url: Some("http://10.0.0.2:8080/ebd/receive"),
                dest_ebrid: None,
                time_ms: 1_700_000_000_000,
                related_ebdid: Some("10233072300000001010101010000000000000007"),
            },
            |w| response_body(w, 4, "签名验证失败 <&>"),
        );
        let parsed = parse_ebdb(&xml).expect("parse");
        assert_eq!(parsed.header.ebd_type, "EBDResponse");
        assert_eq!(
            parsed.header.related_ebdid.as_deref(),
            Some("10233072300000001010101010000000000000007")
        );
        assert_eq!(parsed.header.ebd_time_ms, 1_700_000_000_000);
        let body = parsed.body().expect("body");
        assert_eq!(leaf(body, "ResultCode").as_deref(), Some("4"));
        assert_eq!(
            leaf(body, "ResultDesc").as_deref(),
            Some("签名验证失败 <&>")
        );
    }

    #[test]
    fn hostile_and_malformed_ebdbs_get_the_right_code() {
        let code = |xml: &str| {
            parse_ebdb(xml.as_bytes())
                .map(|_| 0)
                .unwrap_or_else(|e| e.result_code())
        };
        let head = |id: &str, ty: &str, src: &str, time: &str| {
            format!(
                "<EBD><EBDVersion>1</EBDVersion><EBDID>{id}</EBDID><EBDType>{ty}</EBDType><SRC><EBRID>{src}</EBRID></SRC><EBDTime>{time}</EBDTime><{ty}><RptTime>{time}</RptTime></{ty}></EBD>"
            )
        };
        let good_id = "01433072300000003140102010000000000000000";
        let good_src = "43307230000000314010201";
        assert_eq!(
            code(&head(
                good_id,
                "ConnectionCheck",
                good_src,
                "2026-12-01 10:00:00"
            )),
            0
        );
        assert_eq!(
            code(&head(
                "12345",
                "ConnectionCheck",
                good_src,
                "2026-12-01 10:00:00"
            )),
            2
        );
        assert_eq!(
            code(&head(good_id, "Bogus", good_src, "2026-12-01 10:00:00")),
            2
        );
        assert_eq!(
            code(&head(
                good_id,
                "ConnectionCheck",
                "4330723",
                "2026-12-01 10:00:00"
            )),
            2
        );
        assert_eq!(
            code(&head(
                good_id,
                "ConnectionCheck",
                good_src,
                "2026/12/01 10:00"
            )),
            2
        );
        assert_eq!(
            code(&head(
                good_id,
                "ConnectionCheck",
                good_src,
                "2026-13-01 10:00:00"
            )),
            2
        );
        assert_eq!(code("<EBD><EBDType>EBM</EBDType></EBD>"), 3);
        assert_eq!(code("not xml at all"), 2);
        assert_eq!(code("<EBD>"), 2);
        assert_eq!(
            code("<?xml version=\"1.0\"?><!DOCTYPE EBD [<!ENTITY x \"y\">]><EBD>&x;</EBD>"),
            2
        );
        assert_eq!(
            code("<!DOCTYPE EBD SYSTEM \"file:///etc/passwd\"><EBD/>"),
            2
        );
        assert_eq!(code("<EBD>&lol;</EBD>"), 2);
        // A body missing for the type it names.
        let no_body = format!(
            "<EBD><EBDID>{good_id}</EBDID><EBDType>EBM</EBDType><SRC><EBRID>{good_src}</EBRID></SRC><EBDTime>2026-12-01 10:00:00</EBDTime></EBD>"
        );
        assert_eq!(code(&no_body), 3);
    }

    #[test]
    fn members_are_sorted_by_prefix_and_duplicates_refused() {
        let m = |n: &str| tar::Member {
            name: n.into(),
            bytes: b"x",
            offset: 0,
        };
        let files = sort_members(vec![m("EBDB_1.xml"), m("EBDR_a.mp3"), m("EBDS_EBDB_1.xml")])
            .expect("files");
        assert_eq!(files.ebdb_name, "EBDB_1.xml");
        assert!(files.ebds.is_some());
        assert_eq!(files.resources.len(), 1);
        assert_eq!(
            sort_members(vec![m("EBDR_a.mp3")])
                .map(|_| ())
                .unwrap_err()
                .result_code(),
            3
        );
        assert_eq!(
            sort_members(vec![m("EBDB_1.xml"), m("EBDB_2.xml")])
                .map(|_| ())
                .unwrap_err()
                .result_code(),
            2
        );
    }

    proptest! {
        #[test]
        fn garbage_ebdbs_and_ebms_never_panic(noise in proptest::collection::vec(any::<u8>(), 0..2000), cut in 0usize..1200) {
            let _ = parse_ebdb(&noise);
            let _ = parse_ebds(&noise);
            let real = sample("01_EBM_play_2017JS_EBDB_100102320000000000010000000000097264.xml");
            let cut_real = &real[..cut.min(real.len())];
            if let Ok(e) = parse_ebdb(cut_real) && let Some(b) = e.body() {
                let _ = parse_ebm(b);
            }
        }
    }
}
