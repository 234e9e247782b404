//! What of a peer's text the hub may repeat in an error, a log line or the catalog, when the peer
//! was sent a secret (the SNA, sent the vCenter password) and may echo it back in any encoding.
//!
//! The text is quoted whole or not at all; it is never scrubbed by cutting the secret out. A cut
//! leaves `***` where the secret stood, and the text around it tells what stood there (a one-letter
//! password turns `/api/v1` into `/a***i/v1`; `wrong password` into `wrong ***` when the password is
//! `password`). So [`quote`] withholds the whole text when it holds a secret in any form it can
//! decode — raw, JSON-escaped (`\"`, `\\`, `\u00e4`, surrogate pairs, nested once), percent- or
//! form-encoded, base64, or bytes read as Latin-1 — and always when a secret is too short for its
//! absence to mean nothing: that the text does not contain a one-letter password tells which
//! letter it is not.

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};

/// How much of a peer's text goes into a message, in characters.
pub const MAX_QUOTE: usize = 500;
/// A secret of fewer characters withholds every text (see the module's comment).
pub const MIN_SECRET_CHARS: usize = 8;
/// What stands for a withheld text. Fixed, so it says nothing of the secret or the text.
pub const WITHHELD: &str = "(its answer is withheld: it may contain the password)";
/// How far into the text a secret is looked for: the quote is at most `MAX_QUOTE` characters
/// (4 bytes each at most) of it, and an encoded secret that starts inside the quote ends well
/// within this.
const LOOK: usize = 1 << 20;

/// `text` as one line of at most [`MAX_QUOTE`] characters, or [`WITHHELD`] if it may hold one of
/// `secrets` (empty ones are none).
pub fn quote(text: &[u8], secrets: &[&str]) -> String {
    let secrets: Vec<&str> = secrets.iter().copied().filter(|s| !s.is_empty()).collect();
    let start = text
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(text.len());
    let text = &text[start..];
    let text = &text[..text.len().min(LOOK)];
    let line = one_line(text);
    let withhold = secrets.iter().any(|s| {
        // The line has controls as spaces: so has the secret looked for in it.
        let spaced: String = s
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        s.chars().count() < MIN_SECRET_CHARS || holds(text, s) || holds(line.as_bytes(), &spaced)
    });
    if withhold { WITHHELD.to_owned() } else { line }
}

/// The start of `text` as one line (controls become spaces), or "(empty answer)".
fn one_line(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    let line: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_QUOTE)
        .collect();
    if line.is_empty() {
        "(empty answer)".to_owned()
    } else {
        line
    }
}

/// Whether `secret` is in `text` in any form decoded here, up to two decodings deep (a JSON body
/// quoting a JSON string, a JSON-escaped URL).
fn holds(text: &[u8], secret: &str) -> bool {
    let latin1: String = text.iter().map(|&b| char::from(b)).collect();
    let mut forms = vec![String::from_utf8_lossy(text).into_owned(), latin1];
    let mut new = forms.clone();
    for _ in 0..2 {
        let decoded: Vec<String> = new
            .iter()
            .flat_map(|f| {
                [
                    json_unescape(f),
                    percent_decode(f, false),
                    percent_decode(f, true),
                ]
            })
            .flatten()
            .collect();
        forms.extend(decoded.iter().cloned());
        new = decoded;
    }
    let b64 = base64_cores(secret.as_bytes());
    forms
        .iter()
        .any(|f| f.contains(secret) || b64.iter().any(|c| f.contains(c.as_str())))
}

/// `\"`, `\\`, `\/`, `\n`… and `\uXXXX` (pairs joined) decoded; `None` if there is no escape.
fn json_unescape(text: &str) -> Option<String> {
    if !text.contains('\\') {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let (c, used) = json_escape(rest);
        out.push_str(&c);
        rest = &rest[used..];
    }
    out.push_str(rest);
    Some(out)
}

/// The escape at the start of `s` (which starts with `\`): what it stands for, bytes used. What
/// is not an escape stands for itself.
fn json_escape(s: &str) -> (Cow<'_, str>, usize) {
    let unit = |s: &str| {
        s.get(2..6)
            .filter(|_| s.as_bytes().get(1) == Some(&b'u'))
            .and_then(|h| u32::from_str_radix(h, 16).ok())
    };
    let simple = match s.as_bytes().get(1) {
        Some(b'"') => Some('"'),
        Some(b'\\') => Some('\\'),
        Some(b'/') => Some('/'),
        Some(b'b') => Some('\u{8}'),
        Some(b'f') => Some('\u{c}'),
        Some(b'n') => Some('\n'),
        Some(b'r') => Some('\r'),
        Some(b't') => Some('\t'),
        _ => None,
    };
    if let Some(c) = simple {
        return (Cow::Owned(c.to_string()), 2);
    }
    let Some(high) = unit(s) else {
        return (Cow::Borrowed("\\"), 1);
    };
    let low = Some(high)
        .filter(|h| (0xD800..0xDC00).contains(h))
        .and_then(|_| unit(&s[6..]))
        .filter(|l| (0xDC00..0xE000).contains(l));
    if let Some(low) = low {
        let c = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
        return (
            Cow::Owned(char::from_u32(c).unwrap_or('\u{fffd}').to_string()),
            12,
        );
    }
    let c = char::from_u32(high).unwrap_or('\u{fffd}');
    (Cow::Owned(c.to_string()), 6)
}

/// `%XX` decoded (and `+` as a space for `form`); `None` if nothing changes.
fn percent_decode(text: &str, form: bool) -> Option<String> {
    if !(text.contains('%') || form && text.contains('+')) {
        return None;
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) if form => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// What base64 of `secret` has in common wherever it stands in an encoded run: for each of the
/// three alignments, the whole 3-byte groups, in both alphabets.
fn base64_cores(secret: &[u8]) -> Vec<String> {
    (0..3)
        .filter_map(|skip| secret.get(skip..))
        .map(|tail| &tail[..tail.len() / 3 * 3])
        .filter(|groups| !groups.is_empty())
        .flat_map(|groups| {
            [
                STANDARD_NO_PAD.encode(groups),
                URL_SAFE_NO_PAD.encode(groups),
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ODD: &str = "pässwörd\"\\x";

    fn percent(s: &str) -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    }

    /// Python's `json.dumps` default: every non-ASCII character as `\uXXXX`.
    fn ascii_json(s: &str, upper: bool) -> String {
        let mut out = String::new();
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_ascii() => out.push(c),
                c => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        out.push_str(&if upper {
                            format!("\\u{u:04X}")
                        } else {
                            format!("\\u{u:04x}")
                        });
                    }
                }
            }
        }
        out
    }

    #[test]
    fn text_without_the_secret_is_one_line() {
        assert_eq!(quote(b"  bad\nlogin\n", &["long-enough-1"]), "bad login");
        assert_eq!(quote(b"", &[]), "(empty answer)");
        assert_eq!(quote(b"bad login", &["", "long-enough-1"]), "bad login");
        let long = "x".repeat(2 * MAX_QUOTE);
        assert_eq!(quote(long.as_bytes(), &[]).chars().count(), MAX_QUOTE);
    }

    #[test]
    fn every_encoding_of_the_secret_withholds_the_text() {
        let json = serde_json::to_string(ODD).unwrap();
        let inner = &json[1..json.len() - 1];
        let nested = serde_json::to_string(&json).unwrap();
        let emoji = "ключ-🔑-secret";
        let spaced = "with a space";
        let texts = [
            (ODD, format!("login failed for password {ODD}")),
            (
                ODD,
                format!(r#"{{"error":"login refused","password":{json}}}"#),
            ),
            (
                ODD,
                format!(
                    r#"{{"details":"password {} refused"}}"#,
                    ascii_json(ODD, false)
                ),
            ),
            (
                emoji,
                format!(r#"{{"details":"{} refused"}}"#, ascii_json(emoji, false)),
            ),
            (
                emoji,
                format!(r#"{{"details":"{} refused"}}"#, ascii_json(emoji, true)),
            ),
            (ODD, format!(r#"{{"details":"request was {nested}"}}"#)),
            (
                ODD,
                format!("POST /login?user=a&password={}&x=1", percent(ODD)),
            ),
            (
                spaced,
                format!("password={}", percent(spaced).replace("%20", "+")),
            ),
            (
                ODD,
                format!("Basic {}", STANDARD_NO_PAD.encode(format!("u:{ODD}"))),
            ),
            (ODD, format!("echo {}", inner.replace('\\', "\\\\"))),
        ];
        for (secret, text) in &texts {
            assert_eq!(quote(text.as_bytes(), &[secret]), WITHHELD, "{text}");
        }
        // The password as Latin-1 bytes (not UTF-8).
        let latin1: Vec<u8> = ODD.chars().map(|c| c as u8).collect();
        assert_eq!(quote(&[b"bad: ", &latin1[..]].concat(), &[ODD]), WITHHELD);
        // Where the quote would cut it in half, or after a long run of spaces.
        let cut = format!("{}{ODD}", "x".repeat(MAX_QUOTE - 3));
        assert_eq!(quote(cut.as_bytes(), &[ODD]), WITHHELD);
        let far = format!("{}{ODD}", " ".repeat(3 * LOOK));
        assert_eq!(quote(far.as_bytes(), &[ODD]), WITHHELD);
        // A control character in the secret, turned into a space by the one-line quote.
        let tab = "tab\tin-the-secret";
        assert_eq!(quote(b"x tab\tin-the-secret", &[tab]), WITHHELD);
        assert_eq!(quote(b"x tab in-the-secret", &[tab]), WITHHELD);
    }

    #[test]
    fn short_secrets_withhold_every_text() {
        for secret in ["p", "a", "pa55", "äöü", "1234567"] {
            for text in ["/api/v1/backup/start refused", "zzz", ""] {
                let q = quote(text.as_bytes(), &[secret]);
                assert_eq!(q, WITHHELD, "{secret:?} {text:?}");
            }
        }
        // Eight characters is enough.
        assert_eq!(quote(b"zzz", &["12345678"]), "zzz");
    }

    #[test]
    fn a_secret_inside_common_words_is_never_cut_out() {
        for (secret, text) in [
            ("password", "wrong user name or password"),
            ("nnection", "connection refused"),
            ("ckup/sta", "POST /api/v1/backup/start failed"),
            ("Validation", "Validation failed: vm_path is required"),
        ] {
            let q = quote(text.as_bytes(), &[secret]);
            assert_eq!(q, WITHHELD, "{secret:?}");
        }
        assert!(!WITHHELD.contains("***"));
    }
}
