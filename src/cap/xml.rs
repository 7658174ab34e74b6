//! A small XML writer whose output is already in exclusive canonical form (see [`super::sign`]):
//! start and end tags for every element, attributes as given (callers give them in canonical order),
//! text and attribute values escaped exactly as canonical XML escapes them, nothing between elements.

pub struct Writer {
    out: String,
    open: Vec<&'static str>,
}

pub(crate) fn escape_text(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#xD;"),
            // Other control characters are not allowed in XML 1.0 at all.
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
}

pub(crate) fn escape_attr(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#x9;"),
            '\n' => out.push_str("&#xA;"),
            '\r' => out.push_str("&#xD;"),
            c if (c as u32) < 0x20 => {}
            c => out.push(c),
        }
    }
}

impl Writer {
    pub fn new() -> Writer {
        Writer {
            out: String::new(),
            open: Vec::new(),
        }
    }

    pub fn open(&mut self, name: &'static str, attrs: &[(&str, &str)]) -> &mut Self {
        self.out.push('<');
        self.out.push_str(name);
        for (k, v) in attrs {
            self.out.push(' ');
            self.out.push_str(k);
            self.out.push_str("=\"");
            escape_attr(v, &mut self.out);
            self.out.push('"');
        }
        self.out.push('>');
        self.open.push(name);
        self
    }

    pub fn close(&mut self) -> &mut Self {
        if let Some(name) = self.open.pop() {
            self.out.push_str("</");
            self.out.push_str(name);
            self.out.push('>');
        }
        self
    }

    /// `<name>text</name>`.
    pub fn leaf(&mut self, name: &'static str, text: &str) -> &mut Self {
        self.open(name, &[]);
        escape_text(text, &mut self.out);
        self.close()
    }

    pub fn finish(mut self) -> String {
        while !self.open.is_empty() {
            self.close();
        }
        self.out
    }
}

impl Default for Writer {
    fn default() -> Self {
        Writer::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_attributes_are_escaped_as_canonical_xml_does() {
        let mut w = Writer::new();
        w.open("a", &[("k", "x\"<&\t\n")])
            .leaf("b", "1 < 2 & 3 > 2 \"q\" 'a'\r")
            .close();
        assert_eq!(
            w.finish(),
            "<a k=\"x&quot;&lt;&amp;&#x9;&#xA;\"><b>1 &lt; 2 &amp; 3 &gt; 2 \"q\" 'a'&#xD;</b></a>"
        );
    }
}
