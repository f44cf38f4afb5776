//! OneBot v11 messages: segment arrays and CQ-code strings, both ways.
//!
//! A message is a list of segments `{"type": "text", "data": {"text": "hi"}}`; the
//! string form writes every segment but text as a CQ code, `[CQ:at,qq=123]`, with `&`,
//! `[`, `]` (and `,` inside a code) escaped as the standard says.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::MessageFormat;

/// One segment of a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub data: Map<String, Value>,
}

impl Segment {
    pub fn new(kind: &str, data: &[(&str, String)]) -> Segment {
        Segment {
            kind: kind.to_string(),
            data: data
                .iter()
                .map(|(k, v)| (k.to_string(), Value::String(v.clone())))
                .collect(),
        }
    }

    pub fn text(text: impl Into<String>) -> Segment {
        Segment::new("text", &[("text", text.into())])
    }

    pub fn at(qq: i64) -> Segment {
        Segment::new("at", &[("qq", qq.to_string())])
    }

    /// A data field as a string, however it was written (bots send `qq` as a number
    /// or a string).
    pub fn field(&self, name: &str) -> Option<String> {
        match self.data.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

/// Why a message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadMessage(pub String);

/// A message as an action's `message` param gives it: a CQ string (plain text with
/// `auto_escape`), one segment, or a segment array.
pub fn parse(value: &Value, auto_escape: bool) -> Result<Vec<Segment>, BadMessage> {
    match value {
        Value::String(s) if auto_escape => Ok(vec![Segment::text(s.clone())]),
        Value::String(s) => Ok(parse_cq(s)),
        Value::Array(items) => items
            .iter()
            .map(|item| {
                serde_json::from_value::<Segment>(item.clone()).map_err(|e| {
                    BadMessage(format!(
                        "`message`: a segment must be {{\"type\": …, \"data\": {{…}}}} ({e})"
                    ))
                })
            })
            .collect(),
        Value::Object(_) => serde_json::from_value::<Segment>(value.clone())
            .map(|s| vec![s])
            .map_err(|e| BadMessage(format!("`message`: not a segment ({e})"))),
        Value::Null => Err(BadMessage("`message` is required".into())),
        _ => Err(BadMessage(
            "`message` must be a string, a segment or an array of segments".into(),
        )),
    }
}

/// The message in the shape `message_format` asks for.
pub fn render(segments: &[Segment], format: MessageFormat) -> Value {
    match format {
        MessageFormat::Array => {
            serde_json::to_value(segments).unwrap_or_else(|_| Value::Array(Vec::new()))
        }
        MessageFormat::String => Value::String(to_cq(segments)),
    }
}

fn escape(text: &str, in_code: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '[' => out.push_str("&#91;"),
            ']' => out.push_str("&#93;"),
            ',' if in_code => out.push_str("&#44;"),
            c => out.push(c),
        }
    }
    out
}

fn unescape(text: &str) -> String {
    text.replace("&#44;", ",")
        .replace("&#91;", "[")
        .replace("&#93;", "]")
        .replace("&amp;", "&")
}

/// The CQ-code string of a message (`raw_message`, and `message` in string format).
pub fn to_cq(segments: &[Segment]) -> String {
    let mut out = String::new();
    for segment in segments {
        if segment.kind == "text" {
            out.push_str(&escape(&segment.field("text").unwrap_or_default(), false));
            continue;
        }
        out.push_str("[CQ:");
        out.push_str(&segment.kind);
        for (key, value) in &segment.data {
            let value = match value {
                Value::String(s) => s.clone(),
                Value::Null => continue,
                other => other.to_string(),
            };
            out.push(',');
            out.push_str(key);
            out.push('=');
            out.push_str(&escape(&value, true));
        }
        out.push(']');
    }
    out
}

/// Reads a CQ-code string. Text that only looks like a code (`[CQ:` never closed, or a
/// code with no type) stays text.
pub fn parse_cq(s: &str) -> Vec<Segment> {
    let mut segments = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("[CQ:") {
        let Some(len) = rest[start..].find(']') else {
            break;
        };
        let code = &rest[start + 4..start + len];
        let mut parts = code.split(',');
        let kind = parts.next().unwrap_or_default().trim();
        if kind.is_empty() || !kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            text.push_str(&rest[..start + len + 1]);
            rest = &rest[start + len + 1..];
            continue;
        }
        text.push_str(&rest[..start]);
        if !text.is_empty() {
            segments.push(Segment::text(unescape(&std::mem::take(&mut text))));
        }
        let mut data = Map::new();
        for part in parts {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            data.insert(key.trim().to_string(), Value::String(unescape(value)));
        }
        segments.push(Segment {
            kind: kind.to_string(),
            data,
        });
        rest = &rest[start + len + 1..];
    }
    text.push_str(rest);
    if !text.is_empty() {
        segments.push(Segment::text(unescape(&text)));
    }
    segments
}

/// A mention the text of a WeChat message may write as `@Name`.
pub struct Mentioned {
    /// The contact's number (`at.qq`).
    pub qq: i64,
    /// The name WeChat writes after `@`, when known.
    pub name: Option<String>,
}

/// The segments of an inbound WeChat text: each `@Name` WeChat wrote for a mention
/// becomes one `at` segment (and leaves the text, with the separator after it), so
/// NoneBot's `to_me()` and `get_plaintext()` behave as with QQ. A mention whose
/// `@Name` is not in the text (a puppet that does not write it) is put first.
pub fn inbound_text(text: &str, mentions: &[Mentioned]) -> Vec<Segment> {
    let mut placed = vec![false; mentions.len()];
    // Each `@` that starts a written mention: where it starts and ends, and whose it is.
    let mut found: Vec<(usize, usize, usize)> = Vec::new();
    for (i, m) in mentions.iter().enumerate() {
        let Some(name) = m.name.as_deref().filter(|n| !n.is_empty()) else {
            continue;
        };
        let token = format!("@{name}");
        let mut from = 0;
        while let Some(at) = text[from..].find(&token).map(|p| p + from) {
            let end = at + token.len();
            let next = text[end..].chars().next();
            let overlaps = found.iter().any(|&(s, e, _)| at < e && s < end);
            if !overlaps && matches!(next, None | Some('\u{2005}' | ' ' | '\n')) {
                // The separator WeChat puts after a mention goes with it.
                let end = match next {
                    Some(c @ ('\u{2005}' | ' ')) => end + c.len_utf8(),
                    _ => end,
                };
                found.push((at, end, i));
                placed[i] = true;
                break;
            }
            from = end;
        }
    }
    // Mentions whose name is not known take, in order, the other `@…` + U+2005 that
    // WeChat wrote (the separator it puts after every mention).
    let mut from = 0;
    for (i, m) in mentions.iter().enumerate() {
        if placed[i] || m.name.is_some() {
            continue;
        }
        while let Some(at) = text[from..].find('@').map(|p| p + from) {
            let Some(len) = text[at..].find('\u{2005}') else {
                from = text.len();
                break;
            };
            let end = at + len + '\u{2005}'.len_utf8();
            let name = &text[at + 1..at + len];
            from = end;
            let taken = found.iter().any(|&(s, e, _)| at < e && s < end);
            if !taken && !name.is_empty() && !name.contains(['@', '\n']) {
                found.push((at, end, i));
                placed[i] = true;
                break;
            }
        }
    }
    found.sort_by_key(|&(start, ..)| start);
    let mut segments: Vec<Segment> = mentions
        .iter()
        .zip(&placed)
        .filter(|(_, placed)| !**placed)
        .map(|(m, _)| Segment::at(m.qq))
        .collect();
    let mut cursor = 0;
    for (start, end, i) in found {
        if start > cursor {
            segments.push(Segment::text(&text[cursor..start]));
        }
        segments.push(Segment::at(mentions[i].qq));
        cursor = end;
    }
    if cursor < text.len() {
        segments.push(Segment::text(&text[cursor..]));
    }
    if segments.is_empty() {
        segments.push(Segment::text(""));
    }
    segments
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cq_codes_round_trip_with_escapes() {
        let segments = vec![
            Segment::text("a & [b],"),
            Segment::at(42),
            Segment::new("image", &[("file", "x,y[1].png".into())]),
            Segment::text(" end"),
        ];
        let cq = to_cq(&segments);
        assert_eq!(
            cq,
            "a &amp; &#91;b&#93;,[CQ:at,qq=42][CQ:image,file=x&#44;y&#91;1&#93;.png] end"
        );
        assert_eq!(parse_cq(&cq), segments);
    }

    #[test]
    fn broken_codes_stay_text() {
        assert_eq!(
            parse_cq("see [CQ:at,qq=1"),
            vec![Segment::text("see [CQ:at,qq=1")]
        );
        assert_eq!(parse_cq("[CQ:]x"), vec![Segment::text("[CQ:]x")]);
        assert_eq!(parse_cq(""), Vec::<Segment>::new());
    }

    #[test]
    fn messages_parse_from_every_shape() {
        let array =
            json!([{"type": "at", "data": {"qq": 7}}, {"type": "text", "data": {"text": " hi"}}]);
        let parsed = parse(&array, false).unwrap();
        assert_eq!(parsed[0].field("qq").as_deref(), Some("7"));
        assert_eq!(parse(&json!("[CQ:at,qq=7] hi"), false).unwrap(), {
            vec![Segment::at(7), Segment::text(" hi")]
        });
        assert_eq!(
            parse(&json!("[CQ:at,qq=7]"), true).unwrap(),
            vec![Segment::text("[CQ:at,qq=7]")]
        );
        assert!(parse(&json!(5), false).is_err());
        assert!(parse(&json!([{"data": {}}]), false).is_err());
    }

    #[test]
    fn written_mentions_become_at_segments() {
        let mentions = [
            Mentioned {
                qq: 1,
                name: Some("Bot".into()),
            },
            Mentioned {
                qq: 2,
                name: Some("Bob".into()),
            },
        ];
        let segments = inbound_text("@Bot\u{2005}hello @Bob\u{2005}and @Bobby", &mentions);
        assert_eq!(
            segments,
            vec![
                Segment::at(1),
                Segment::text("hello "),
                Segment::at(2),
                Segment::text("and @Bobby"),
            ]
        );
        // A name not known: the next `@…` WeChat wrote with its separator.
        let segments = inbound_text(
            "@Bot\u{2005}@Bob\u{2005}hi",
            &[
                Mentioned {
                    qq: 1,
                    name: Some("Bot".into()),
                },
                Mentioned { qq: 2, name: None },
            ],
        );
        assert_eq!(
            segments,
            vec![Segment::at(1), Segment::at(2), Segment::text("hi")]
        );
        // Not written in the text: put first.
        let segments = inbound_text("hi", &[Mentioned { qq: 1, name: None }]);
        assert_eq!(segments, vec![Segment::at(1), Segment::text("hi")]);
        assert_eq!(inbound_text("", &[]), vec![Segment::text("")]);
    }
}
