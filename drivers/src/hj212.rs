//! HJ 212-2017, the national environmental monitoring data protocol: frame parsing and checking,
//! data extraction for real-time, minute, hourly and daily uploads, and the responses the protocol
//! requires. Pure functions over bytes; transports (TCP listener, serial) feed them.
//!
//! A frame is `##` + four-digit data length + data segment + four hex digits of CRC + `\r\n`. The data
//! segment is `QN=…;ST=…;CN=…;PW=…;MN=…;Flag=…;CP=&&…&&`. The CRC is the standard's own CRC-16
//! variant (shift the register right by eight before adding each byte, polynomial 0xA001).

use std::fmt::Write as _;

/// The longest data segment the standard allows.
pub const MAX_DATA_LEN: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Hj212Error {
    #[error("frame does not start with ##")]
    Header,
    #[error("frame length field is not four digits")]
    LengthField,
    #[error("frame length {0} is over the standard's 1024")]
    TooLong(usize),
    #[error("frame is shorter than its length field says")]
    Truncated,
    #[error("frame does not end with CRLF")]
    Trailer,
    #[error("CRC field is not four hex digits")]
    CrcField,
    #[error("CRC mismatch: frame says {stated:04X}, data gives {computed:04X}")]
    Crc { stated: u16, computed: u16 },
    #[error("data segment is not UTF-8")]
    Encoding,
    #[error("data segment lacks {0}")]
    Missing(&'static str),
    #[error("data segment is malformed: {0}")]
    Malformed(String),
}

/// The standard's CRC-16.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &byte in data {
        crc = (crc >> 8) ^ u16::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// A checked frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub qn: Option<String>,
    pub st: String,
    pub cn: String,
    pub pw: String,
    pub mn: String,
    pub flag: u8,
    /// The command parameters (`CP=&&…&&`): groups separated by `;`, fields by `,`, as key/value pairs.
    pub cp: Vec<(String, String)>,
}

impl Frame {
    /// Flag bit A: the sender wants an answer.
    pub fn wants_response(&self) -> bool {
        self.flag & 1 != 0
    }

    pub fn cp_value(&self, key: &str) -> Option<&str> {
        self.cp
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Checks and parses one complete frame (including the trailing CRLF).
pub fn parse(bytes: &[u8]) -> Result<Frame, Hj212Error> {
    if !bytes.starts_with(b"##") {
        return Err(Hj212Error::Header);
    }
    let len_field = bytes.get(2..6).ok_or(Hj212Error::Truncated)?;
    if !len_field.iter().all(u8::is_ascii_digit) {
        return Err(Hj212Error::LengthField);
    }
    let len: usize = std::str::from_utf8(len_field)
        .map_err(|_| Hj212Error::LengthField)?
        .parse()
        .map_err(|_| Hj212Error::LengthField)?;
    if len > MAX_DATA_LEN {
        return Err(Hj212Error::TooLong(len));
    }
    let data = bytes.get(6..6 + len).ok_or(Hj212Error::Truncated)?;
    let crc_field = bytes.get(6 + len..10 + len).ok_or(Hj212Error::Truncated)?;
    let trailer = bytes.get(10 + len..12 + len).ok_or(Hj212Error::Truncated)?;
    if trailer != b"\r\n" || bytes.len() != 12 + len {
        return Err(Hj212Error::Trailer);
    }
    let crc_text = std::str::from_utf8(crc_field).map_err(|_| Hj212Error::CrcField)?;
    let stated = u16::from_str_radix(crc_text, 16).map_err(|_| Hj212Error::CrcField)?;
    let computed = crc16(data);
    if stated != computed {
        return Err(Hj212Error::Crc { stated, computed });
    }
    parse_data(std::str::from_utf8(data).map_err(|_| Hj212Error::Encoding)?)
}

fn parse_data(data: &str) -> Result<Frame, Hj212Error> {
    let (head, cp) = data.split_once("CP=&&").ok_or(Hj212Error::Missing("CP"))?;
    let cp = cp
        .strip_suffix("&&")
        .ok_or_else(|| Hj212Error::Malformed("CP does not end with &&".into()))?;
    let mut fields = std::collections::HashMap::new();
    for part in head.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            Hj212Error::Malformed(format!(
                "`{}` is not key=value",
                part.chars().take(40).collect::<String>()
            ))
        })?;
        fields.insert(k, v);
    }
    let get = |k: &'static str| {
        fields
            .get(k)
            .map(|v| v.to_string())
            .ok_or(Hj212Error::Missing(k))
    };
    let mut pairs = Vec::new();
    for group in cp.split(';').filter(|g| !g.is_empty()) {
        for field in group.split(',').filter(|f| !f.is_empty()) {
            let (k, v) = field.split_once('=').ok_or_else(|| {
                Hj212Error::Malformed(format!(
                    "CP field `{}`",
                    field.chars().take(40).collect::<String>()
                ))
            })?;
            pairs.push((k.to_string(), v.to_string()));
        }
    }
    Ok(Frame {
        qn: fields.get("QN").map(|v| v.to_string()),
        st: get("ST")?,
        cn: get("CN")?,
        pw: get("PW")?,
        mn: get("MN")?,
        flag: fields.get("Flag").and_then(|f| f.parse().ok()).unwrap_or(0),
        cp: pairs,
    })
}

/// Builds a frame around a data segment.
pub fn encode(data: &str) -> Vec<u8> {
    let mut out = String::with_capacity(data.len() + 12);
    let _ = write!(
        out,
        "##{:04}{}{:04X}\r\n",
        data.len(),
        data,
        crc16(data.as_bytes())
    );
    out.into_bytes()
}

/// Which kind of data upload a command number is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upload {
    RealTime,
    Minute,
    Hour,
    Day,
}

pub fn upload_kind(cn: &str) -> Option<Upload> {
    match cn {
        "2011" => Some(Upload::RealTime),
        "2051" => Some(Upload::Minute),
        "2061" => Some(Upload::Hour),
        "2031" => Some(Upload::Day),
        _ => None,
    }
}

/// One factor's value from a data upload: `a34004-Rtd=35.2,a34004-Flag=N`.
#[derive(Debug, Clone, PartialEq)]
pub struct FactorValue {
    /// The factor code, kept as the metric name (`a34004`).
    pub code: String,
    /// `Rtd` (real-time), `Avg`, `Min`, `Max` or `Cou` (cumulative).
    pub statistic: String,
    pub value: f64,
    /// The data flag (`N` normal; others mark the value as flagged by the device).
    pub flag: Option<String>,
}

/// The factor values and data time of a data upload; other commands give none.
pub fn factor_values(frame: &Frame) -> (Option<String>, Vec<FactorValue>) {
    if upload_kind(&frame.cn).is_none() {
        return (None, Vec::new());
    }
    let data_time = frame.cp_value("DataTime").map(String::from);
    let mut values: Vec<FactorValue> = Vec::new();
    for (k, v) in &frame.cp {
        let Some((code, statistic)) = k.split_once('-') else {
            continue;
        };
        if !matches!(statistic, "Rtd" | "Avg" | "Min" | "Max" | "Cou") {
            continue;
        }
        let Ok(value) = v.parse::<f64>() else {
            continue;
        };
        if !value.is_finite() {
            continue;
        }
        values.push(FactorValue {
            code: code.to_string(),
            statistic: statistic.to_string(),
            value,
            flag: None,
        });
    }
    for v in &mut values {
        v.flag = frame
            .cp_value(&format!("{}-Flag", v.code))
            .map(String::from);
    }
    (data_time, values)
}

/// Built-in display names and units for common HJ 212-2017 factor codes (air and surface water).
/// Configuration can add codes (`[hj212] factors`); the metric name stays the code.
const FACTORS: &[(&str, &str, &str)] = &[
    ("a01001", "温度", "℃"),
    ("a01002", "湿度", "%"),
    ("a01006", "气压", "kPa"),
    ("a01007", "风速", "m/s"),
    ("a01008", "风向", "°"),
    ("a05024", "臭氧", "μg/m³"),
    ("a21004", "二氧化氮", "μg/m³"),
    ("a21005", "一氧化碳", "mg/m³"),
    ("a21026", "二氧化硫", "μg/m³"),
    ("a34001", "总悬浮颗粒物", "μg/m³"),
    ("a34002", "PM10", "μg/m³"),
    ("a34004", "PM2.5", "μg/m³"),
    ("w00000", "污水流量", "L/s"),
    ("w01001", "pH 值", ""),
    ("w01003", "浊度", "NTU"),
    ("w01009", "溶解氧", "mg/L"),
    ("w01010", "水温", "℃"),
    ("w01014", "电导率", "μS/cm"),
    ("w01018", "化学需氧量", "mg/L"),
    ("w01019", "高锰酸盐指数", "mg/L"),
    ("w21001", "总氮", "mg/L"),
    ("w21003", "氨氮", "mg/L"),
    ("w21011", "总磷", "mg/L"),
];

/// The built-in display name and unit of a factor code.
pub fn factor_info(code: &str) -> Option<(&'static str, &'static str)> {
    FACTORS
        .iter()
        .find(|(c, _, _)| *c == code)
        .map(|(_, name, unit)| (*name, *unit))
}

/// The data response (CN 9014) the standard requires when an upload asks for one.
pub fn data_response(frame: &Frame) -> Option<Vec<u8>> {
    if !frame.wants_response() || upload_kind(&frame.cn).is_none() {
        return None;
    }
    let qn = frame.qn.as_deref().unwrap_or("");
    Some(encode(&format!(
        "QN={qn};ST=91;CN=9014;PW={};MN={};Flag=4;CP=&&&&",
        frame.pw, frame.mn
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The example frame from the standard, whose CRC is 1C80.
    const STANDARD_EXAMPLE: &str = "##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;CP=&&RtdInterval=30&&1C80\r\n";

    #[test]
    fn the_standards_example_checks_out() {
        let frame = parse(STANDARD_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(frame.cn, "1062");
        assert_eq!(frame.mn, "010000A8900016F000169DC0");
        assert_eq!(frame.cp_value("RtdInterval"), Some("30"));
        assert!(frame.wants_response());
        assert_eq!(
            encode(
                "QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;CP=&&RtdInterval=30&&"
            ),
            STANDARD_EXAMPLE.as_bytes()
        );
    }

    #[test]
    fn real_time_data_and_its_response() {
        let data = "QN=20260801120000001;ST=22;CN=2011;PW=123456;MN=010000A8900016F000169DC0;Flag=5;CP=&&DataTime=20260801120000;a34004-Rtd=35.2,a34004-Flag=N;a21026-Rtd=8.1,a21026-Flag=D&&";
        let frame = parse(&encode(data)).unwrap();
        let (time, values) = factor_values(&frame);
        assert_eq!(time.as_deref(), Some("20260801120000"));
        assert_eq!(values.len(), 2);
        assert_eq!(
            values[0],
            FactorValue {
                code: "a34004".into(),
                statistic: "Rtd".into(),
                value: 35.2,
                flag: Some("N".into())
            }
        );
        assert_eq!(values[1].flag.as_deref(), Some("D"));
        let response = data_response(&frame).unwrap();
        let reply = parse(&response).unwrap();
        assert_eq!(
            (reply.cn.as_str(), reply.st.as_str(), reply.qn.as_deref()),
            ("9014", "91", Some("20260801120000001"))
        );
        let minute = "QN=1;ST=22;CN=2051;PW=1;MN=M;Flag=4;CP=&&DataTime=20260801120000;a34004-Avg=30.0,a34004-Min=20.5,a34004-Max=41,a34004-Flag=N&&";
        let frame = parse(&encode(minute)).unwrap();
        assert_eq!(factor_values(&frame).1.len(), 3);
        assert!(data_response(&frame).is_none(), "Flag=4 asks for no answer");
    }

    #[test]
    fn corrupted_frames_are_refused_with_the_reason() {
        let good = STANDARD_EXAMPLE.as_bytes();
        let mut bad_crc = good.to_vec();
        bad_crc[good.len() - 3] = b'1';
        assert!(matches!(parse(&bad_crc), Err(Hj212Error::Crc { .. })));
        let mut flipped = good.to_vec();
        flipped[20] ^= 0x01;
        assert!(matches!(parse(&flipped), Err(Hj212Error::Crc { .. })));
        assert_eq!(parse(&good[..50]), Err(Hj212Error::Truncated));
        assert_eq!(parse(b"$$0101"), Err(Hj212Error::Header));
        assert_eq!(parse(b"##01a1"), Err(Hj212Error::LengthField));
        assert_eq!(parse(b"##9999"), Err(Hj212Error::TooLong(9999)));
        let mut no_crlf = good.to_vec();
        no_crlf.truncate(good.len() - 2);
        no_crlf.extend_from_slice(b"\n\n");
        assert_eq!(parse(&no_crlf), Err(Hj212Error::Trailer));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1200)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn noisy_and_truncated_frames_never_panic_or_pass(cut in 0usize..140, at in 0usize..140, noise in any::<u8>()) {
            let mut bytes = STANDARD_EXAMPLE.as_bytes().to_vec();
            let i = at.min(bytes.len() - 1);
            let changed = bytes[i] != noise;
            bytes[i] = noise;
            bytes.truncate(cut.max(1));
            let result = parse(&bytes);
            if changed && cut >= STANDARD_EXAMPLE.len() {
                prop_assert!(result.is_err(), "a changed byte must not pass the CRC");
            }
        }

        #[test]
        fn any_well_formed_data_round_trips(value in -1e6f64..1e6, code in "a[0-9]{5}") {
            let data = format!("QN=1;ST=22;CN=2011;PW=1;MN=M;Flag=4;CP=&&{code}-Rtd={value},{code}-Flag=N&&");
            let frame = parse(&encode(&data)).unwrap();
            let (_, values) = factor_values(&frame);
            prop_assert_eq!(values.len(), 1);
            prop_assert!((values[0].value - value).abs() < 1e-6 * value.abs().max(1.0));
        }
    }
}
