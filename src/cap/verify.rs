//! Checking the enveloped XML Signature on an inbound CAP alert against a key the operator trusts
//! (a feed's `trusted_key`): exclusive canonicalisation (without comments, with an optional
//! `InclusiveNamespaces` prefix list) of the document minus its `Signature` and of `SignedInfo`,
//! a SHA-256 digest, and ecdsa-sha256 (P-256) or rsa-sha256.
//!
//! Only what a signed alert needs is accepted: one `Reference` with `URI=""`, the enveloped-signature
//! transform, exclusive C14N, SHA-256. Anything else (SHA-1, inclusive C14N, XPath transforms,
//! references to other documents) is refused by name rather than half-checked. The key in the
//! document's `KeyInfo` is never used: only the configured key can make an alert trusted.
//!
//! The document is read by [`super::dom`], with its hostile-input rules; nothing here panics on any
//! input.

use super::dom::{Document, Element, Node, Scope, lookup, namespace_of, parse};
use super::inbound::CapError;
use super::xml::{escape_attr, escape_text};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

const DSIG: &str = "http://www.w3.org/2000/09/xmldsig#";
const EXC_C14N: &str = "http://www.w3.org/2001/10/xml-exc-c14n#";
const ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";
const SHA256: &str = "http://www.w3.org/2001/04/xmlenc#sha256";
const ECDSA_SHA256: &str = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256";
const RSA_SHA256: &str = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256";

fn err(s: impl Into<String>) -> CapError {
    CapError(s.into())
}

/// Exclusive canonicalisation of one element and its subtree (less `skip`), given the namespaces
/// in scope from its ancestors in the input and those already rendered by its ancestors in the output.
struct Canonicaliser<'a> {
    /// Prefixes from an `InclusiveNamespaces PrefixList` (`""` for `#default`).
    inclusive: &'a [String],
    skip: Option<*const Element>,
    out: String,
}

impl Canonicaliser<'_> {
    fn element(
        &mut self,
        el: &Element,
        scope: &mut Scope,
        rendered: &mut Scope,
    ) -> Result<(), CapError> {
        if self.skip.is_some_and(|s| std::ptr::eq(s, el)) {
            return Ok(());
        }
        let (scope_len, rendered_len) = (scope.len(), rendered.len());
        for (p, u) in el.declarations() {
            scope.push((p.to_string(), u.to_string()));
        }
        // Visibly utilised prefixes: the element's own and its prefixed attributes', plus the
        // inclusive list's where they are in scope.
        let mut used: Vec<&str> = vec![el.prefix()];
        for (k, _) in &el.attrs {
            if let Some((p, _)) = k.split_once(':')
                && p != "xmlns"
                && p != "xml"
            {
                used.push(p);
            }
        }
        for p in self.inclusive {
            if lookup(scope, p).is_some() {
                used.push(p);
            }
        }
        used.sort_unstable();
        used.dedup();
        let mut declare: Vec<(String, String)> = Vec::new();
        for p in used {
            let uri = match lookup(scope, p) {
                Some(u) => u.to_string(),
                None if p.is_empty() => String::new(),
                None => return Err(err(format!("the prefix `{p}` is not declared"))),
            };
            if p == "xml" {
                continue;
            }
            let shown = lookup(rendered, p).unwrap_or("");
            if shown != uri {
                declare.push((p.to_string(), uri));
            }
        }
        // Attributes sort by namespace then local name; unqualified ones have no namespace.
        let mut attrs: Vec<(String, &str, &str, &str)> = Vec::new();
        for (k, v) in &el.attrs {
            if k == "xmlns" || k.starts_with("xmlns:") {
                continue;
            }
            let (uri, local) = match k.split_once(':') {
                Some((p, l)) => (
                    lookup(scope, p)
                        .ok_or_else(|| err(format!("the prefix `{p}` is not declared")))?
                        .to_string(),
                    l,
                ),
                None => (String::new(), k.as_str()),
            };
            attrs.push((uri, local, k.as_str(), v.as_str()));
        }
        attrs.sort_by(|a, b| (a.0.as_str(), a.1).cmp(&(b.0.as_str(), b.1)));

        self.out.push('<');
        self.out.push_str(&el.name);
        for (p, uri) in &declare {
            self.out
                .push_str(if p.is_empty() { " xmlns" } else { " xmlns:" });
            self.out.push_str(p);
            self.out.push_str("=\"");
            escape_attr(uri, &mut self.out);
            self.out.push('"');
        }
        for (_, _, name, value) in &attrs {
            self.out.push(' ');
            self.out.push_str(name);
            self.out.push_str("=\"");
            escape_attr(value, &mut self.out);
            self.out.push('"');
        }
        self.out.push('>');
        rendered.extend(declare);
        for child in &el.children {
            match child {
                Node::Element(e) => self.element(e, scope, rendered)?,
                Node::Text(t) => escape_text(t, &mut self.out),
                Node::Pi(target, data) => self.pi(target, data),
            }
        }
        self.out.push_str("</");
        self.out.push_str(&el.name);
        self.out.push('>');
        scope.truncate(scope_len);
        rendered.truncate(rendered_len);
        Ok(())
    }

    fn pi(&mut self, target: &str, data: &str) {
        self.out.push_str("<?");
        self.out.push_str(target);
        if !data.is_empty() {
            self.out.push(' ');
            self.out.push_str(data);
        }
        self.out.push_str("?>");
    }
}

/// The document less the element `skip`, exclusively canonicalised.
fn canonical_document(
    doc: &Document,
    skip: &Element,
    inclusive: &[String],
) -> Result<String, CapError> {
    let mut c = Canonicaliser {
        inclusive,
        skip: Some(skip as *const Element),
        out: String::new(),
    };
    for node in &doc.before {
        if let Node::Pi(t, d) = node {
            c.pi(t, d);
            c.out.push('\n');
        }
    }
    c.element(&doc.root, &mut Vec::new(), &mut Vec::new())?;
    for node in &doc.after {
        if let Node::Pi(t, d) = node {
            c.out.push('\n');
            c.pi(t, d);
        }
    }
    Ok(c.out)
}

/// The transforms' `InclusiveNamespaces PrefixList`, if any (`#default` is the default namespace).
fn prefix_list(method: &Element) -> Vec<String> {
    method
        .elements()
        .filter(|e| e.local() == "InclusiveNamespaces")
        .filter_map(|e| e.attr("PrefixList"))
        .flat_map(|l| l.split_whitespace())
        .map(|p| if p == "#default" { "" } else { p }.to_string())
        .collect()
}

fn child<'a>(el: &'a Element, local: &str) -> Result<&'a Element, CapError> {
    el.elements()
        .find(|e| e.local() == local)
        .ok_or_else(|| err(format!("the signature has no <{local}>")))
}

fn algorithm(el: &Element) -> &str {
    el.attr("Algorithm").unwrap_or("")
}

fn base64(el: &Element, what: &str) -> Result<Vec<u8>, CapError> {
    let text: String = el.text().chars().filter(|c| !c.is_whitespace()).collect();
    STANDARD
        .decode(text)
        .map_err(|_| err(format!("the {what} is not base64")))
}

/// A public key the operator trusts, from a PEM public key (SubjectPublicKeyInfo) or certificate.
#[derive(Clone, PartialEq, Eq)]
pub enum TrustedKey {
    /// The uncompressed P-256 point.
    P256(Vec<u8>),
    /// An RSAPublicKey, DER.
    Rsa(Vec<u8>),
}

impl std::fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TrustedKey::P256(_) => "TrustedKey(P-256)",
            TrustedKey::Rsa(_) => "TrustedKey(RSA)",
        })
    }
}

/// A minimal DER reader: (tag, contents, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &b in &rest[..n] {
            len = (len << 8) | usize::from(b);
        }
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

fn key_from_spki(spki: &[u8]) -> Option<TrustedKey> {
    let (0x30, body, _) = der(spki)? else {
        return None;
    };
    let (0x30, alg, rest) = der(body)? else {
        return None;
    };
    let (0x03, bits, _) = der(rest)? else {
        return None;
    };
    let (&0, key) = bits.split_first()? else {
        return None;
    };
    let (0x06, oid, params) = der(alg)? else {
        return None;
    };
    if oid == OID_EC_PUBLIC_KEY {
        let (0x06, curve, _) = der(params)? else {
            return None;
        };
        (curve == OID_P256 && key.len() == 65 && key[0] == 4)
            .then(|| TrustedKey::P256(key.to_vec()))
    } else if oid == OID_RSA {
        Some(TrustedKey::Rsa(key.to_vec()))
    } else {
        None
    }
}

/// The SubjectPublicKeyInfo inside an X.509 certificate.
fn spki_of_certificate(cert: &[u8]) -> Option<&[u8]> {
    let (0x30, body, _) = der(cert)? else {
        return None;
    };
    let (0x30, mut tbs, _) = der(body)? else {
        return None;
    };
    // [0] version (optional), serial, signature algorithm, issuer, validity, subject, then the key.
    let mut skip = 5;
    if tbs.first() == Some(&0xa0) {
        skip += 1;
    }
    for _ in 0..skip {
        tbs = der(tbs)?.2;
    }
    let (tag, _, rest) = der(tbs)?;
    (tag == 0x30).then(|| &tbs[..tbs.len() - rest.len()])
}

impl TrustedKey {
    /// Reads a PEM `PUBLIC KEY` or `CERTIFICATE` (P-256 or RSA).
    pub fn from_pem(pem: &str) -> Result<TrustedKey, String> {
        let kind = if pem.contains("-----BEGIN PUBLIC KEY-----") {
            "PUBLIC KEY"
        } else if pem.contains("-----BEGIN CERTIFICATE-----") {
            "CERTIFICATE"
        } else {
            return Err("expected a PEM `PUBLIC KEY` or `CERTIFICATE`".into());
        };
        let begin = format!("-----BEGIN {kind}-----");
        let end = format!("-----END {kind}-----");
        let body = pem
            .split_once(&begin)
            .and_then(|(_, rest)| rest.split_once(&end))
            .map(|(body, _)| body)
            .ok_or_else(|| format!("the PEM has no `{end}`"))?;
        let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        let bytes = STANDARD
            .decode(b64)
            .map_err(|_| "the PEM is not base64".to_string())?;
        let spki = if kind == "CERTIFICATE" {
            spki_of_certificate(&bytes).ok_or("the certificate could not be read")?
        } else {
            &bytes
        };
        key_from_spki(spki).ok_or_else(|| "only P-256 (ECDSA) and RSA keys are supported".into())
    }

    fn verify(&self, method: &str, message: &[u8], signature: &[u8]) -> Result<(), CapError> {
        use ring::signature::{ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256};
        let (alg, key): (&dyn ring::signature::VerificationAlgorithm, &[u8]) = match (self, method)
        {
            (TrustedKey::P256(k), ECDSA_SHA256) => (&ECDSA_P256_SHA256_FIXED, k),
            (TrustedKey::Rsa(k), RSA_SHA256) => (&RSA_PKCS1_2048_8192_SHA256, k),
            (_, other) => {
                return Err(err(format!(
                    "the signature method `{other}` does not match the trusted key (ecdsa-sha256 for P-256, rsa-sha256 for RSA)"
                )));
            }
        };
        ring::signature::UnparsedPublicKey::new(alg, key)
            .verify(message, signature)
            .map_err(|_| err("the signature does not verify with the trusted key"))
    }
}

/// Checks that `xml` carries an enveloped signature over the whole document by `key`.
pub fn verify(xml: &str, key: &TrustedKey) -> Result<(), CapError> {
    let doc = parse(xml)?;
    let root_scope: Scope = doc
        .root
        .declarations()
        .map(|(p, u)| (p.to_string(), u.to_string()))
        .collect();
    let mut signatures = doc
        .root
        .elements()
        .filter(|e| e.local() == "Signature" && namespace_of(e, &root_scope) == Some(DSIG));
    let signature = signatures
        .next()
        .ok_or_else(|| err("the alert is not signed (no Signature in the root element)"))?;
    if signatures.next().is_some() {
        return Err(err("the alert carries more than one signature"));
    }
    let signed_info = child(signature, "SignedInfo")?;
    let c14n = child(signed_info, "CanonicalizationMethod")?;
    if algorithm(c14n) != EXC_C14N {
        return Err(err(format!(
            "canonicalisation `{}` is not supported (exclusive C14N only)",
            algorithm(c14n)
        )));
    }
    let method = algorithm(child(signed_info, "SignatureMethod")?).to_string();
    let mut references = signed_info.elements().filter(|e| e.local() == "Reference");
    let reference = references
        .next()
        .ok_or_else(|| err("the signature has no <Reference>"))?;
    if references.next().is_some() || reference.attr("URI") != Some("") {
        return Err(err(
            "the signature must have one Reference to the whole alert (URI=\"\")",
        ));
    }
    let mut enveloped = false;
    let mut exclusive = false;
    let mut inclusive = Vec::new();
    if let Ok(transforms) = child(reference, "Transforms") {
        for t in transforms.elements() {
            match algorithm(t) {
                ENVELOPED => enveloped = true,
                EXC_C14N => {
                    exclusive = true;
                    inclusive = prefix_list(t);
                }
                other => {
                    return Err(err(format!("the transform `{other}` is not supported")));
                }
            }
        }
    }
    if !enveloped {
        return Err(err(
            "the signature's Reference lacks the enveloped-signature transform",
        ));
    }
    // Without an explicit exclusive C14N transform the standard means inclusive C14N, which this
    // node does not compute: say so rather than report a digest mismatch.
    if !exclusive {
        return Err(err(
            "the signature's Reference must name the exclusive C14N transform (inclusive C14N is not supported)",
        ));
    }
    if algorithm(child(reference, "DigestMethod")?) != SHA256 {
        return Err(err("the digest must be SHA-256"));
    }
    let expected = base64(child(reference, "DigestValue")?, "digest")?;
    let document = canonical_document(&doc, signature, &inclusive)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, document.as_bytes());
    if digest.as_ref() != expected.as_slice() {
        return Err(err(
            "the alert was changed after it was signed (its digest does not match)",
        ));
    }
    // SignedInfo is canonicalised as a subtree: the namespaces of its ancestors are in scope but
    // none is rendered yet.
    let mut scope = root_scope;
    scope.extend(
        signature
            .declarations()
            .map(|(p, u)| (p.to_string(), u.to_string())),
    );
    let mut c = Canonicaliser {
        inclusive: &prefix_list(c14n),
        skip: None,
        out: String::new(),
    };
    c.element(signed_info, &mut scope, &mut Vec::new())?;
    let value = base64(child(signature, "SignatureValue")?, "signature value")?;
    key.verify(&method, c.out.as_bytes(), &value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn canonical(xml: &str) -> String {
        let doc = parse(xml).unwrap();
        let nothing = Element::default();
        canonical_document(&doc, &nothing, &[]).unwrap()
    }

    #[test]
    fn canonical_form_follows_exclusive_c14n() {
        // Declaration and comments dropped, empty elements expanded, attributes sorted by
        // namespace then name, unused namespaces dropped, line ends and attribute white space
        // normalised, text re-escaped, CDATA as text.
        let xml = "<?xml version=\"1.0\"?>\r\n<!-- c --><a:r xmlns:a=\"urn:a\" xmlns:unused=\"urn:u\" xmlns=\"urn:d\" z=\"1\" a:y=\"2\" b=\"x\ty\r\nz\">\r\n<e/><f g=\"&#x9;&quot;&lt;\">x &gt; &#65;<![CDATA[<&>]]></f><!-- c --></a:r>";
        assert_eq!(
            canonical(xml),
            "<a:r xmlns:a=\"urn:a\" b=\"x y z\" z=\"1\" a:y=\"2\">\n<e xmlns=\"urn:d\"></e><f xmlns=\"urn:d\" g=\"&#x9;&quot;&lt;\">x &gt; A&lt;&amp;&gt;</f></a:r>"
        );
    }

    #[test]
    fn a_default_namespace_is_undeclared_where_a_child_leaves_it() {
        assert_eq!(
            canonical("<r xmlns=\"urn:d\"><c xmlns=\"\"><d/></c></r>"),
            "<r xmlns=\"urn:d\"><c xmlns=\"\"><d></d></c></r>"
        );
    }

    fn sign_ours(canonical_doc: &str) -> (String, TrustedKey) {
        let dir = tempfile::tempdir().unwrap();
        let key = super::super::sign::CapKey::load_or_create(dir.path()).unwrap();
        let signed = key.sign_document(canonical_doc).unwrap();
        let trusted = TrustedKey::from_pem(&key.public_pem()).unwrap();
        (signed, trusted)
    }

    const ALERT: &str = "<alert xmlns=\"urn:oasis:names:tc:emergency:cap:1.2\"><identifier>a1</identifier><sender>s@x</sender></alert>";

    #[test]
    fn our_own_signed_alerts_verify_and_any_change_does_not() {
        let (signed, key) = sign_ours(ALERT);
        verify(&signed, &key).unwrap();
        let changed = signed.replace(">a1<", ">a2<");
        assert!(verify(&changed, &key).unwrap_err().0.contains("changed"));
        let (_, other) = sign_ours(ALERT);
        assert!(
            verify(&signed, &other)
                .unwrap_err()
                .0
                .contains("does not verify")
        );
        assert!(verify(ALERT, &key).unwrap_err().0.contains("not signed"));
    }

    #[test]
    fn processing_instructions_keep_one_space_and_disallowed_characters_are_refused() {
        assert_eq!(
            canonical("<?xml-stylesheet   href=\"a.xsl\"?><r/>"),
            "<?xml-stylesheet href=\"a.xsl\"?>\n<r></r>"
        );
        assert!(parse("<r>a&#1;b</r>").is_err());
        assert_eq!(canonical("<r><![CDATA[a\rb]]></r>"), "<r>a\nb</r>");
    }

    #[test]
    fn a_reference_to_something_else_or_weak_digest_is_refused() {
        let (signed, key) = sign_ours(ALERT);
        let elsewhere = signed.replace("URI=\"\"", "URI=\"#x\"");
        assert!(verify(&elsewhere, &key).unwrap_err().0.contains("URI"));
        let sha1 = signed.replace(SHA256, "http://www.w3.org/2000/09/xmldsig#sha1");
        assert!(verify(&sha1, &key).unwrap_err().0.contains("SHA-256"));
    }

    #[test]
    fn keys_are_read_from_pem_and_certificates() {
        assert!(TrustedKey::from_pem("nonsense").is_err());
        assert!(
            TrustedKey::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----")
                .is_err()
        );
    }

    proptest! {
        #[test]
        fn garbage_and_truncation_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400), cut in 0usize..4000) {
            let (signed, key) = sign_ours(ALERT);
            let _ = verify(&String::from_utf8_lossy(&bytes), &key);
            let cut = signed.char_indices().map(|(i, _)| i).take_while(|i| *i <= cut).last().unwrap_or(0);
            let _ = verify(&signed[..cut], &key);
            let _ = TrustedKey::from_pem(&String::from_utf8_lossy(&bytes));
            let _ = der(&bytes);
            let _ = spki_of_certificate(&bytes);
        }
    }
}
