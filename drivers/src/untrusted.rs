//! Strings from outside (usernames, client ids, topics, MNs, peer reasons) on their way into the
//! logs. Human-format logs are lines on a terminal, so a newline in a sensor's client id could forge
//! a log line and an escape sequence could rewrite the operator's screen. [`Untrusted`] prints such
//! a string with control characters escaped and its length bounded.

use std::fmt;

/// Characters of an untrusted string kept in a log line; the rest is summarised.
const MAX_CHARS: usize = 120;

/// Displays an untrusted string safely: control characters (newlines, ESC, DEL, C1 codes, bidi
/// overrides) escaped as `\u{..}`, at most [`MAX_CHARS`] characters.
#[derive(Clone, Copy)]
pub struct Untrusted<'a>(pub &'a str);

fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.0.chars().count();
        for c in self.0.chars().take(MAX_CHARS) {
            if is_unsafe(c) {
                write!(f, "\\u{{{:x}}}", c as u32)?;
            } else {
                fmt::Write::write_char(f, c)?;
            }
        }
        if total > MAX_CHARS {
            write!(f, "…(+{} chars)", total - MAX_CHARS)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_never_reach_the_line() {
        let shown = Untrusted("dev\nFAKE LOG LINE\x1b[2J\u{202e}x\u{7f}").to_string();
        assert!(!shown.chars().any(is_unsafe), "{shown}");
        assert!(shown.contains("\\u{a}") && shown.contains("\\u{1b}"));
        assert_eq!(Untrusted("rain-02").to_string(), "rain-02");
        assert_eq!(Untrusted("网格员").to_string(), "网格员");
        let long = "a".repeat(500);
        assert!(Untrusted(&long).to_string().len() < 200);
    }

    proptest::proptest! {
        #[test]
        fn nothing_unsafe_survives(s in ".{0,300}") {
            let shown = Untrusted(&s).to_string();
            proptest::prop_assert!(!shown.chars().any(is_unsafe));
        }
    }
}
