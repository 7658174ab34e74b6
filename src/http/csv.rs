//! CSV for the exports (incidents, sensor readings): what Excel and WPS open correctly — UTF-8 with a
//! byte-order mark, CRLF line ends, RFC 4180 quoting — and what they cannot be tricked by: a cell that
//! a spreadsheet would read as a formula (OWASP "CSV injection") is written as text.

/// Put first in every CSV body, so spreadsheets read it as UTF-8.
pub const BOM: &str = "\u{feff}";

/// Whether a spreadsheet could take the cell as a formula: it begins with `=`, `+`, `-` or `@`
/// once leading whitespace is trimmed (as some programs trim it), or with a TAB or CR at all.
fn formula_like(cell: &str) -> bool {
    cell.starts_with(['\t', '\r'])
        || cell
            .trim_start_matches(|c: char| c.is_whitespace())
            .starts_with(['=', '+', '-', '@'])
}

/// One cell: defused with a leading `'` if it could be a formula, then quoted if it needs quotes.
pub fn field(cell: &str) -> String {
    let cell = if formula_like(cell) {
        format!("'{cell}")
    } else {
        cell.to_string()
    };
    if cell.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", cell.replace('"', "\"\""))
    } else {
        cell
    }
}

/// One line of cells, with its CRLF.
pub fn line<S: AsRef<str>>(cells: &[S]) -> String {
    let mut out = cells
        .iter()
        .map(|c| field(c.as_ref()))
        .collect::<Vec<_>>()
        .join(",");
    out.push_str("\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn quoting_and_defusing() {
        assert_eq!(field("plain"), "plain");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("=cmd()"), "'=cmd()");
        assert_eq!(field("  =1+1"), "'  =1+1");
        assert_eq!(field("\u{3000}@SUM(A1)"), "'\u{3000}@SUM(A1)");
        assert_eq!(field("\t=1"), "'\t=1");
        assert_eq!(field("\tplain"), "'\tplain");
        assert_eq!(field("\r=1"), "\"'\r=1\"");
        assert_eq!(field("-3.5"), "'-3.5");
        assert_eq!(line(&["a", "=b"]), "a,'=b\r\n");
    }

    proptest! {
        /// Whatever a cell holds, what a spreadsheet reads back never begins like a formula.
        #[test]
        fn no_cell_reads_as_a_formula(cell in "\\PC{0,12}|[ \t\r=+@-]{1,3}\\PC{0,6}") {
            let out = field(&cell);
            let unquoted = out.strip_prefix('"').unwrap_or(&out);
            prop_assert!(!formula_like(unquoted) || unquoted.starts_with('\''));
            prop_assert!(!unquoted.starts_with(['\t', '\r']));
        }
    }
}
