//! The one XML reader for documents from outside (CAP alerts, their signatures): a small tree with
//! qualified names, namespace declarations and attributes kept as written, built with the rules
//! hostile input needs. A document type declaration of any kind is refused (so no external
//! entities and no entity expansion: XXE and "billion laughs"), only the five predefined entities
//! and character references are resolved, element count, depth and text are bounded, and anything
//! else wrong is named in the error. It never panics.

use quick_xml::events::Event;

use super::inbound::CapError;

/// Most elements one document may have (a real alert has a few dozen).
const MAX_ELEMENTS: usize = 5_000;
/// An alert is four levels deep, its signature six.
const MAX_DEPTH: usize = 24;
/// Most bytes in one text node.
const MAX_TEXT: usize = 64 * 1024;
const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

fn err(s: impl Into<String>) -> CapError {
    CapError(s.into())
}

#[derive(Debug)]
pub(crate) enum Node {
    Element(Element),
    Text(String),
    /// Target and data.
    Pi(String, String),
}

#[derive(Debug, Default)]
pub(crate) struct Element {
    /// The qualified name as written (`ds:Signature`).
    pub(crate) name: String,
    /// Attributes as written, namespace declarations included, values unescaped and normalised.
    pub(crate) attrs: Vec<(String, String)>,
    pub(crate) children: Vec<Node>,
}

impl Element {
    pub(crate) fn prefix(&self) -> &str {
        self.name.split_once(':').map_or("", |(p, _)| p)
    }
    pub(crate) fn local(&self) -> &str {
        self.name.split_once(':').map_or(&self.name, |(_, l)| l)
    }
    /// This element's own namespace declarations, as (prefix, uri); the default one has prefix "".
    pub(crate) fn declarations(&self) -> impl Iterator<Item = (&str, &str)> {
        self.attrs.iter().filter_map(|(k, v)| {
            if k == "xmlns" {
                Some(("", v.as_str()))
            } else {
                k.strip_prefix("xmlns:").map(|p| (p, v.as_str()))
            }
        })
    }
    pub(crate) fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|c| match c {
            Node::Element(e) => Some(e),
            _ => None,
        })
    }
    pub(crate) fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub(crate) fn text(&self) -> String {
        self.children
            .iter()
            .filter_map(|c| match c {
                Node::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect()
    }
}

/// In-scope namespaces while walking down: (prefix, uri), innermost last.
pub(crate) type Scope = Vec<(String, String)>;

pub(crate) fn lookup<'a>(scope: &'a [(String, String)], prefix: &str) -> Option<&'a str> {
    if prefix == "xml" {
        return Some(XML_NS);
    }
    scope
        .iter()
        .rev()
        .find(|(p, _)| p == prefix)
        .map(|(_, u)| u.as_str())
}

/// The namespace of `el`, with the declarations of its ancestors in `scope` (its own not yet).
pub(crate) fn namespace_of<'a>(el: &'a Element, scope: &'a [(String, String)]) -> Option<&'a str> {
    let prefix = el.prefix();
    el.declarations()
        .find(|(p, _)| *p == prefix)
        .map(|(_, u)| u)
        .or_else(|| lookup(scope, prefix))
}

/// Character and predefined entity references; anything else refuses the document.
pub(crate) fn resolve_ref(name: &str) -> Option<char> {
    if let Some(num) = name.strip_prefix('#') {
        let code = match num.strip_prefix('x') {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => num.parse().ok()?,
        };
        // Only characters XML 1.0 allows: a reference to any other is no character at all (and
        // would otherwise vanish from the canonical form, changing the text unseen by the digest).
        return char::from_u32(code).filter(|c| {
            matches!(*c, '\t' | '\n' | '\r')
                || (*c >= ' ' && !matches!(*c, '\u{FFFE}' | '\u{FFFF}'))
        });
    }
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        _ => return None,
    })
}

/// An attribute value as an XML processor reports it: line ends normalised, literal white space
/// turned into spaces, then references resolved (so `&#xA;` stays a line feed).
fn attribute_value(raw: &str) -> Result<String, CapError> {
    let raw = raw.replace("\r\n", "\n");
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw.as_str();
    while let Some(at) = rest.find(['&', '\t', '\n', '\r', '<']) {
        out.push_str(&rest[..at]);
        let c = rest[at..].chars().next().unwrap_or(' ');
        if c == '<' {
            return Err(err("`<` in an attribute value"));
        }
        if c == '&' {
            let end = rest[at..]
                .find(';')
                .ok_or_else(|| err("an unterminated reference in an attribute"))?;
            let name = &rest[at + 1..at + end];
            out.push(
                resolve_ref(name)
                    .ok_or_else(|| err(format!("unknown entity `&{name};` in an attribute")))?,
            );
            rest = &rest[at + end + 1..];
        } else {
            out.push(' ');
            rest = &rest[at + 1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The document's nodes outside the root (processing instructions) and its root.
pub(crate) struct Document {
    pub(crate) before: Vec<Node>,
    pub(crate) root: Element,
    pub(crate) after: Vec<Node>,
}

pub(crate) fn parse(xml: &str) -> Result<Document, CapError> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut stack: Vec<Element> = Vec::new();
    let (mut before, mut after) = (Vec::new(), Vec::new());
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    let push_text = |stack: &mut Vec<Element>, text: &str| -> Result<(), CapError> {
        if let Some(top) = stack.last_mut() {
            match top.children.last_mut() {
                Some(Node::Text(t)) => t.push_str(text),
                _ => top.children.push(Node::Text(text.to_string())),
            }
            if let Some(Node::Text(t)) = top.children.last()
                && t.len() > MAX_TEXT
            {
                return Err(err(format!("the text of <{}> is too long", top.name)));
            }
        }
        Ok(())
    };
    loop {
        let event = reader
            .read_event()
            .map_err(|e| err(format!("not well-formed XML: {e}")))?;
        match event {
            Event::DocType(_) => {
                return Err(err(
                    "a document type declaration is not allowed (no DTDs, no entities)",
                ));
            }
            Event::Start(ref e) | Event::Empty(ref e) => {
                count += 1;
                if count > MAX_ELEMENTS || stack.len() >= MAX_DEPTH {
                    return Err(err("the document is too large or too deeply nested"));
                }
                if root.is_some() && stack.is_empty() {
                    return Err(err("content after the root element"));
                }
                let mut el = Element {
                    name: String::from_utf8_lossy(e.name().as_ref()).into_owned(),
                    ..Element::default()
                };
                for attr in e.attributes() {
                    let attr = attr.map_err(|e| err(format!("a bad attribute: {e}")))?;
                    let key = String::from_utf8_lossy(attr.key.as_ref()).into_owned();
                    let raw = std::str::from_utf8(&attr.value)
                        .map_err(|_| err("an attribute is not UTF-8"))?;
                    el.attrs.push((key, attribute_value(raw)?));
                }
                if matches!(event, Event::Empty(_)) {
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(Node::Element(el)),
                        None => root = Some(el),
                    }
                } else {
                    stack.push(el);
                }
            }
            Event::End(_) => {
                let el = stack
                    .pop()
                    .ok_or_else(|| err("an end tag without its start"))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Element(el)),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => {
                let text = t
                    .xml10_content()
                    .map_err(|e| err(format!("bad text: {e}")))?;
                if stack.is_empty() {
                    if !text.trim().is_empty() {
                        return Err(err("text outside the root element"));
                    }
                } else {
                    push_text(&mut stack, &text)?;
                }
            }
            Event::CData(t) => {
                // Line ends normalised as everywhere else in XML (a lone CR too).
                let text = String::from_utf8_lossy(&t)
                    .replace("\r\n", "\n")
                    .replace('\r', "\n");
                push_text(&mut stack, &text)?;
            }
            Event::GeneralRef(r) => {
                let name = r.decode().map_err(|e| err(format!("bad reference: {e}")))?;
                let c = resolve_ref(&name).ok_or_else(|| {
                    err(format!(
                        "unknown entity `&{name};` (only the predefined ones are allowed)"
                    ))
                })?;
                push_text(&mut stack, c.encode_utf8(&mut [0; 4]))?;
            }
            Event::PI(pi) => {
                let target = String::from_utf8_lossy(pi.target()).into_owned();
                // The data starts after the white space that follows the target.
                let data = String::from_utf8_lossy(pi.content())
                    .trim_start()
                    .to_string();
                let node = Node::Pi(target, data);
                match (stack.last_mut(), root.is_some()) {
                    (Some(top), _) => top.children.push(node),
                    (None, false) => before.push(node),
                    (None, true) => after.push(node),
                }
            }
            Event::Decl(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(err("the document ends inside an element"));
    }
    let root = root.ok_or_else(|| err("no root element"))?;
    Ok(Document {
        before,
        root,
        after,
    })
}
