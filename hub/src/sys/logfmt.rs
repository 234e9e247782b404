//! Text log fields with control characters escaped. VM names, export names, peer strings and error
//! texts come from outside: a raw `\n` or `\r` in one would forge a log line, and bidi controls
//! reorder what an operator reads. (JSON logs escape control characters by themselves.)

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// `tracing_subscriber`'s `DefaultFields` layout (`message key=value …`), every value escaped.
#[derive(Debug, Default)]
pub struct EscapedFields;

impl<'w> FormatFields<'w> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = Visitor {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct Visitor<'a, 'w> {
    writer: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Visitor<'_, '_> {
    fn put(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        let sep = if self.first { "" } else { " " };
        self.first = false;
        self.result = if field.name() == "message" {
            write!(self.writer, "{sep}{}", Escaped(value))
        } else {
            write!(self.writer, "{sep}{}={}", field.name(), Escaped(value))
        };
    }
}

impl Visit for Visitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, &format!("{value:?}"));
    }
}

/// Whether a character must not reach a text log raw: C0/C1 controls and DEL, line and paragraph
/// separators, and the bidi marks, embeddings, overrides and isolates.
fn must_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}'
        )
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// A string shown with `\n`, `\r`, `\t` and `\u{…}` for what [`must_escape`] names.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if must_escape(c) => write!(f, "\\u{{{:04x}}}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Escaped;

    #[test]
    fn escapes_what_forges_lines() {
        let shown =
            Escaped("vm\n2026 INFO forged\r\u{0}\u{1b}[2J\u{202e}gnp.exe\u{2028}ü").to_string();
        assert_eq!(
            shown,
            "vm\\n2026 INFO forged\\r\\u{0000}\\u{001b}[2J\\u{202e}gnp.exe\\u{2028}ü"
        );
    }
}
