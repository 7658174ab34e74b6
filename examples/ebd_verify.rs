//! Emergency-broadcast signature figures for the README, run by `tests/bench/ebd.sh` in release
//! mode on one core: SM2/SM3 verifications per second of the real signed Jiangsu package against
//! its platform certificate (the shared sample), and whole-package checks per second (tar, XML,
//! signature, the MP3's Size and Digest and its length) of a package with the MP3 given as the
//! first argument, as the receive endpoint runs them before anything touches the database.

use std::time::{Duration, Instant};

use township_node::ebd::{Trust, package, receive, sm, tar};

fn per_second(what: &str, budget: Duration, mut f: impl FnMut() -> bool) {
    let (start, mut n) = (Instant::now(), 0u64);
    while start.elapsed() < budget {
        assert!(f(), "{what} failed");
        n += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{what}: {n} in {secs:.2} s = {:.0}/s ({:.3} ms each)",
        n as f64 / secs,
        secs * 1000.0 / n as f64
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/ebd");
    let ebdb = std::fs::read(
        samples.join("01_EBM_play_2017JS_EBDB_100102320000000000010000000000097264.xml"),
    )?;
    let ebds = std::fs::read(
        samples.join("02_EBM_play_2017JS_EBDS_EBDB_100102320000000000010000000000097264.xml"),
    )?;
    let cert = sm::Cert::read(&samples.join("05_cert_JS_platform_SN00000000090d.cert"))?;
    let value = sm::SignatureValue::parse(&package::parse_ebds(&ebds)?.signature_value)?;
    let budget = Duration::from_secs(3);
    per_second("SM2 verification of the Jiangsu package", budget, || {
        sm::verify_package(&cert, &ebdb, &value)
    });

    let Some(mp3_path) = std::env::args().nth(1) else {
        return Ok(());
    };
    let mp3 = std::fs::read(&mp3_path)?;
    let key = sm::NodeSmKey::generate()?;
    let trust = Trust::from_certs(vec![sm::Cert::parse(&key.certificate())?]);
    let ebdid = "10433072300000001010101010000000000000001";
    let digest = hex::encode(sm::sm3_digest(&mp3));
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><EBD><EBDVersion>1</EBDVersion><EBDID>{ebdid}</EBDID><EBDType>EBM</EBDType><SRC><EBRID>43307230000000101010101</EBRID></SRC><EBDTime>2026-12-01 10:00:00</EBDTime><EBM><EBMVersion>1</EBMVersion><EBMID>433072300000001010101012026120100001</EBMID><MsgBasicInfo><MsgType>1</MsgType><Severity>1</Severity><StartTime>2026-12-01 10:00:00</StartTime><EndTime>2026-12-01 11:00:00</EndTime></MsgBasicInfo><MsgContent><LanguageCode>zho</LanguageCode><MsgTitle>洪水</MsgTitle><MsgDesc>请立即转移</MsgDesc><AreaCode>330723001000</AreaCode><Auxiliary><AuxiliaryType>2</AuxiliaryType><AuxiliaryDesc>EBDR_a.mp3</AuxiliaryDesc><Size>{}</Size><Digest>{digest}</Digest></Auxiliary></MsgContent></EBM></EBD>",
        mp3.len()
    );
    let signature = key.sign_package(xml.as_bytes(), 1);
    let ebds = package::write_ebds(ebdid, &key.sn.to_string(), &signature);
    let archive = tar::write(
        &[
            (&format!("EBDB_{ebdid}.xml"), xml.as_bytes()),
            ("EBDR_a.mp3", &mp3),
            (&format!("EBDS_EBDB_{ebdid}.xml"), &ebds),
        ],
        0,
    );
    println!("package: {} bytes", archive.len());
    per_second("whole-package check", budget, || {
        receive::check(&trust, &archive).is_ok()
    });
    Ok(())
}
