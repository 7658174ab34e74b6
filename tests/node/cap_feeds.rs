//! CAP feeds (`[[cap.feeds]]`) against real signatures: alerts signed by xmlsec1 (Debian's, the
//! reference implementation) with an ECDSA certificate and an RSA key are accepted from feeds that
//! trust them; a tampered alert, an unsigned one and one signed by a stranger are refused, audited
//! and never stored; each alert is fetched once; a feed without a key takes unsigned alerts, and a
//! single alert served at the feed's address counts as a feed.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use township_node::auth::roles::Role;
use township_node::config::{CapFeed, Config};

use crate::common::harness::Harness;

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl (Debian's openssl; tests/run.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn alert(identifier: &str, msg_type: &str, references: &str, colour: &str, method: &str) -> String {
    // Written the way other tools write: declaration, comments, indentation, CDATA, a `ds:` prefix.
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- provincial warning feed -->
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>{identifier}</identifier>
  <sender>zj-weather@cma.gov.cn</sender>
  <sent>2026-07-01T08:00:00+08:00</sent>
  <status>Actual</status>
  <msgType>{msg_type}</msgType>
  <scope>Public</scope>{references}
  <info>
    <language>zh-CN</language><category>Met</category><event>暴雨</event>
    <urgency>Expected</urgency><severity>Severe</severity><certainty>Likely</certainty>
    <headline>武义县暴雨{colour}预警 &amp; 提示</headline>
    <description>未来3小时降雨量&gt;50毫米。<![CDATA[<注意防范>]]></description>
    <parameter><valueName>warningColour</valueName><value>{colour}</value></parameter>
    <area><areaDesc>武义县</areaDesc><geocode><valueName>GB/T 2260</valueName><value>330723000000</value></geocode></area>
  </info>
  <ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#">
    <ds:SignedInfo>
      <ds:CanonicalizationMethod Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/>
      <ds:SignatureMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#{method}"/>
      <ds:Reference URI="">
        <ds:Transforms>
          <ds:Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/>
          <ds:Transform Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/>
        </ds:Transforms>
        <ds:DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/>
        <ds:DigestValue/>
      </ds:Reference>
    </ds:SignedInfo>
    <ds:SignatureValue/>
  </ds:Signature>
</alert>
"#
    )
}

/// Signs a template with xmlsec1 and checks xmlsec1 itself accepts the result.
fn xmlsec_sign(dir: &Path, name: &str, template: &str, key: &Path, public: &Path) -> String {
    let tmpl = dir.join(format!("{name}.tmpl.xml"));
    let out = dir.join(format!("{name}.xml"));
    std::fs::write(&tmpl, template).unwrap();
    let signed = Command::new("xmlsec1")
        .args(["--sign", "--privkey-pem"])
        .arg(key)
        .arg("--output")
        .arg(&out)
        .arg(&tmpl)
        .output()
        .expect("xmlsec1");
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    let verified = Command::new("xmlsec1")
        .args(["--verify", "--pubkey-pem"])
        .arg(public)
        .arg(&out)
        .output()
        .unwrap();
    assert!(verified.status.success(), "xmlsec1 rejects its own {name}");
    std::fs::read_to_string(out).unwrap()
}

/// A feed server: path → body, with a count of requests per path.
#[derive(Clone, Default)]
struct Site {
    files: Arc<Mutex<HashMap<String, String>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl Site {
    fn put(&self, path: &str, body: String) {
        self.files.lock().unwrap().insert(path.into(), body);
    }
    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
    async fn serve(&self) -> String {
        let site = self.clone();
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let site = site.clone();
            async move {
                let path = uri.path().to_string();
                *site.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
                match site.files.lock().unwrap().get(&path) {
                    Some(body) => (StatusCode::OK, body.clone()),
                    None => (StatusCode::NOT_FOUND, String::new()),
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }
}

fn atom(links: &[&str]) -> String {
    let entries: String = links
        .iter()
        .map(|l| {
            format!("<entry><id>{l}</id><title>t</title><link rel=\"alternate\" type=\"application/cap+xml\" href=\"{l}\"/></entry>")
        })
        .collect();
    format!(
        "<?xml version=\"1.0\"?><feed xmlns=\"http://www.w3.org/2005/Atom\"><id>f</id><title>浙江省预警</title>{entries}</feed>"
    )
}

async fn stored(h: &Harness, sql: &'static str) -> i64 {
    h.state()
        .store
        .read(move |c| {
            Ok::<_, township_node::store::StoreError>(c.query_row(sql, [], |r| r.get(0))?)
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn feeds_take_alerts_their_key_signed_and_refuse_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let p = |n: &str| d.join(n).to_string_lossy().into_owned();
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        &p("ec.pem"),
    ]);
    openssl(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        &p("ec.pem"),
        "-out",
        &p("ec8.pem"),
    ]);
    openssl(&["ec", "-in", &p("ec.pem"), "-pubout", "-out", &p("ec.pub")]);
    openssl(&[
        "req",
        "-new",
        "-x509",
        "-key",
        &p("ec.pem"),
        "-subj",
        "/CN=zj-weather",
        "-days",
        "30",
        "-out",
        &p("ec.crt"),
    ]);
    openssl(&["genrsa", "-out", &p("rsa.pem"), "2048"]);
    openssl(&[
        "rsa",
        "-in",
        &p("rsa.pem"),
        "-pubout",
        "-out",
        &p("rsa.pub"),
    ]);
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        &p("stranger.pem"),
    ]);
    openssl(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        &p("stranger.pem"),
        "-out",
        &p("stranger8.pem"),
    ]);
    openssl(&[
        "ec",
        "-in",
        &p("stranger.pem"),
        "-pubout",
        "-out",
        &p("stranger.pub"),
    ]);
    let (ec8, ecpub) = (d.join("ec8.pem"), d.join("ec.pub"));

    let refs = "\n  <references>zj-weather@cma.gov.cn,zj-a1,2026-07-01T08:00:00+08:00</references>";
    let site = Site::default();
    site.put(
        "/p/a1.xml",
        xmlsec_sign(
            d,
            "a1",
            &alert("zj-a1", "Alert", "", "橙色", "ecdsa-sha256"),
            &ec8,
            &ecpub,
        ),
    );
    site.put(
        "/p/u1.xml",
        xmlsec_sign(
            d,
            "u1",
            &alert("zj-u1", "Update", refs, "红色", "ecdsa-sha256"),
            &ec8,
            &ecpub,
        ),
    );
    let tampered = xmlsec_sign(
        d,
        "t1",
        &alert("zj-t1", "Alert", "", "黄色", "ecdsa-sha256"),
        &ec8,
        &ecpub,
    )
    .replace("黄色", "红色");
    site.put("/p/t1.xml", tampered);
    let unsigned = alert("zj-n1", "Alert", "", "蓝色", "ecdsa-sha256");
    let unsigned = unsigned[..unsigned.find("  <ds:Signature").unwrap()].to_string() + "</alert>\n";
    site.put("/p/n1.xml", unsigned.clone());
    site.put(
        "/p/s1.xml",
        xmlsec_sign(
            d,
            "s1",
            &alert("zj-s1", "Alert", "", "红色", "ecdsa-sha256"),
            &d.join("stranger8.pem"),
            &d.join("stranger.pub"),
        ),
    );
    // Newest first, as feeds list them; the Update comes after its Alert when read oldest first.
    site.put(
        "/p/feed.atom",
        atom(&["u1.xml", "t1.xml", "n1.xml", "s1.xml", "a1.xml"]),
    );
    site.put(
        "/r/r1.xml",
        xmlsec_sign(
            d,
            "r1",
            &alert("zj-r1", "Alert", "", "黄色", "rsa-sha256"),
            &d.join("rsa.pem"),
            &d.join("rsa.pub"),
        ),
    );
    site.put(
        "/r/feed.rss",
        "<rss version=\"2.0\"><channel><title>r</title><item><link>/r/r1.xml</link></item></channel></rss>".into(),
    );
    site.put("/single.xml", unsigned.replace("zj-n1", "zj-single"));
    // A hostile feed: far more than a feed may be.
    site.put(
        "/big.atom",
        format!("<feed>{}</feed>", "x".repeat(3 * 1024 * 1024)),
    );
    let base = site.serve().await;

    let mut config = Config::default();
    let feed = |url: String, key: Option<String>| CapFeed {
        url,
        interval: Duration::from_millis(1000),
        trusted_key: key,
    };
    config.cap.feeds = vec![
        // A certificate file, as provinces hand them out.
        feed(format!("{base}/p/feed.atom"), Some(p("ec.crt"))),
        // An RSA public key inline.
        feed(
            format!("{base}/r/feed.rss"),
            Some(std::fs::read_to_string(d.join("rsa.pub")).unwrap()),
        ),
        // No key: unsigned alerts are taken (as from county IT's own relay).
        feed(format!("{base}/single.xml"), None),
        feed(format!("{base}/big.atom"), None),
    ];
    let h = Harness::with_config(config).await;
    township_node::app::start_cap_feeds(h.state());

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = h.state().cap_feeds.snapshot();
        let too_big = s[3]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("larger than"));
        if s[0].accepted == 2
            && s[0].refused == 3
            && s[1].accepted == 1
            && s[2].accepted == 1
            && too_big
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "feeds did not settle: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = h.state().cap_feeds.snapshot();
    let reason = status[0].last_error.clone().unwrap_or_default();
    assert!(reason.contains("signature"), "{reason}");

    // Three warnings: the province's (updated to red by its Update), the RSA feed's, the unsigned feed's.
    assert_eq!(stored(&h, "SELECT count(*) FROM warnings").await, 3);
    assert_eq!(
        stored(
            &h,
            "SELECT count(*) FROM cap_inbound WHERE identifier IN ('zj-t1','zj-n1','zj-s1')"
        )
        .await,
        0,
        "refused alerts leave nothing behind"
    );
    let it = h.user("it.xu", Role::CountyIt, "330723001", None).await;
    let list = h
        .act(&it, "GET", "/api/v1/warnings", None)
        .await
        .expect(StatusCode::OK);
    let items = list["warnings"].as_array().unwrap();
    let mut province = None;
    for w in items {
        let id = w["id"].as_str().unwrap();
        let detail = h
            .act(&it, "GET", &format!("/api/v1/warnings/{id}"), None)
            .await
            .expect(StatusCode::OK);
        if detail["source"]["cap"] == "zj-a1" {
            province = Some(detail);
        }
    }
    let province = province.unwrap_or_else(|| panic!("the signed alert became no warning: {list}"));
    assert_eq!(province["level"], "red", "the signed Update applied");
    assert_eq!(province["state"], "issued");
    let refusals = h
        .audit_actions()
        .await
        .into_iter()
        .filter(|a| a == "cap.refused")
        .count();
    assert_eq!(refusals, 3);

    // Later polls fetch the feed again but no alert twice.
    let polls = site.hits("/p/feed.atom");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while site.hits("/p/feed.atom") < polls + 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the feed is no longer polled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for alert in ["a1", "u1", "t1", "n1", "s1"] {
        assert_eq!(
            site.hits(&format!("/p/{alert}.xml")),
            1,
            "{alert} fetched again"
        );
    }
    assert_eq!(stored(&h, "SELECT count(*) FROM warnings").await, 3);

    // The status is for county IT and admins only.
    let answer = h
        .act(&it, "GET", "/api/v1/cap/feeds", None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(answer["feeds"][0]["accepted"], 2);
    assert_eq!(answer["feeds"][0]["signed"], true);
    let grid = h
        .user("wang.fang", Role::GridWorker, "330723001001", None)
        .await;
    h.act(&grid, "GET", "/api/v1/cap/feeds", None)
        .await
        .expect(StatusCode::FORBIDDEN);
}

#[test]
fn a_feed_with_an_unreadable_key_or_address_refuses_the_config() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config.toml");
    for (body, needle) in [
        (
            "[[cap.feeds]]\nurl = \"http://x/feed\"\ntrusted_key = \"/nonexistent/key.pem\"\n",
            "cap.feeds[0].trusted_key",
        ),
        (
            "[[cap.feeds]]\nurl = \"https://x/feed\"\n",
            "cap.feeds[0].url",
        ),
        (
            "[[cap.feeds]]\nurl = \"http://x/feed\"\ntrusted_key = \"-----BEGIN PUBLIC KEY-----\\nAAAA\\n-----END PUBLIC KEY-----\"\n",
            "cap.feeds[0].trusted_key",
        ),
    ] {
        std::fs::write(&config, body).unwrap();
        let e = Config::load(Some(&config), std::iter::empty()).unwrap_err();
        assert!(e.to_string().contains(needle), "{e}");
    }
}
