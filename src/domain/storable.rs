//! What a JSON document may hold before any of it is stored: PostgreSQL keeps no U+0000
//! in `text` or `jsonb`, serde_json keeps only the last of two equal keys, and a number
//! beyond 64 bits comes back as a float. [`check`] walks the document's text once and
//! refuses each, naming the path (`responses[0].freeformText`, `executionContext.notes`,
//! `plan.nodes[1].prompt`), so whoever sent it learns which field to fix and nothing is
//! written. The API checks request bodies with it, `agent.webhook` agents' replies. The
//! text must already be known to be valid JSON.

/// Where a body holds something that cannot be stored as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unstorable {
    /// The path of the field (or of the key, for a duplicate or a key with U+0000).
    pub path: String,
    /// What is wrong with it.
    pub message: &'static str,
}

/// One step of a path: a key of an object or a position in an array.
enum Step {
    Key(String),
    Index(usize),
}

/// A container being read: its path step, and for an object the keys seen so far.
struct Frame {
    step: Option<Step>,
    keys: Option<Vec<String>>,
    /// The next array position (arrays only).
    next: usize,
}

fn render(frames: &[Frame], last: Option<&Step>) -> String {
    let mut out = String::new();
    let steps = frames.iter().filter_map(|f| f.step.as_ref()).chain(last);
    for step in steps {
        match step {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                // The path itself must be storable (it may end up in a status reason).
                out.push_str(&k.replace('\0', "\\u0000"));
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    if out.is_empty() {
        "body".to_owned()
    } else {
        out
    }
}

/// Refuses U+0000 in any string or key, a key given twice in one object, and an integer
/// that does not fit in 64 bits.
pub fn check(bytes: &[u8]) -> Result<(), Unstorable> {
    let mut frames: Vec<Frame> = Vec::new();
    // The key whose value comes next, in the innermost object.
    let mut pending_key: Option<String> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'{' | b'[' => {
                let step = value_step(&mut frames, &mut pending_key);
                frames.push(Frame {
                    step,
                    keys: (b == b'{').then(Vec::new),
                    next: 0,
                });
                i += 1;
            }
            b'}' | b']' => {
                frames.pop();
                i += 1;
            }
            b'"' => {
                let (text, end) = read_string(bytes, i);
                i = end;
                let in_object = frames.last().is_some_and(|f| f.keys.is_some());
                let is_key =
                    in_object && pending_key.is_none() && next_non_blank(bytes, i) == Some(b':');
                if is_key {
                    let frame = frames.last_mut().expect("inside an object");
                    let keys = frame.keys.as_mut().expect("an object");
                    let duplicate = keys.contains(&text);
                    keys.push(text.clone());
                    let problem = if text.contains('\0') {
                        Some("a key must not contain U+0000")
                    } else if duplicate {
                        Some("is given more than once")
                    } else {
                        None
                    };
                    if let Some(message) = problem {
                        return Err(Unstorable {
                            path: render(&frames, Some(&Step::Key(text))),
                            message,
                        });
                    }
                    pending_key = Some(text);
                } else {
                    let step = value_step(&mut frames, &mut pending_key);
                    if text.contains('\0') {
                        return Err(Unstorable {
                            path: render(&frames, step.as_ref()),
                            message: "must not contain U+0000 (it cannot be stored)",
                        });
                    }
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let step = value_step(&mut frames, &mut pending_key);
                let literal = &bytes[start..i];
                let integer = !literal.iter().any(|c| matches!(c, b'.' | b'e' | b'E'));
                if integer {
                    let text = std::str::from_utf8(literal).unwrap_or("");
                    if text.parse::<i64>().is_err() && text.parse::<u64>().is_err() {
                        return Err(Unstorable {
                            path: render(&frames, step.as_ref()),
                            message: "is an integer beyond 64 bits",
                        });
                    }
                }
            }
            b't' | b'f' | b'n' => {
                value_step(&mut frames, &mut pending_key);
                while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// The path step of the value that starts now: the pending key in an object, the next
/// position in an array, none at the top.
fn value_step(frames: &mut [Frame], pending_key: &mut Option<String>) -> Option<Step> {
    let frame = frames.last_mut()?;
    if frame.keys.is_some() {
        pending_key.take().map(Step::Key)
    } else {
        let i = frame.next;
        frame.next += 1;
        Some(Step::Index(i))
    }
}

fn next_non_blank(bytes: &[u8], from: usize) -> Option<u8> {
    bytes[from..]
        .iter()
        .copied()
        .find(|b| !b.is_ascii_whitespace())
}

/// The string starting at `start` (a `"`), decoded, and the position after it.
fn read_string(bytes: &[u8], start: usize) -> (String, usize) {
    let mut end = start + 1;
    while end < bytes.len() {
        match bytes[end] {
            b'\\' => end += 2,
            b'"' => break,
            _ => end += 1,
        }
    }
    let raw = &bytes[start..=end.min(bytes.len() - 1)];
    let text = serde_json::from_slice::<String>(raw).unwrap_or_default();
    (text, end + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(body: &str) -> Option<(String, &'static str)> {
        check(body.as_bytes()).err().map(|u| (u.path, u.message))
    }

    #[test]
    fn ordinary_bodies_pass() {
        for ok in [
            r#"{}"#,
            r#"{"a": [1, -2, 3.5, 1e300, true, null, "x\"y\\"], "b": {"c": "d"}}"#,
            r#"{"n": 9223372036854775807, "m": -9223372036854775808, "u": 18446744073709551615}"#,
            r#"{"same": 1, "inner": {"same": 2}, "list": [{"same": 3}, {"same": 4}]}"#,
        ] {
            assert_eq!(problem(ok), None, "{ok}");
        }
    }

    #[test]
    fn a_nul_anywhere_is_named_by_its_path() {
        assert_eq!(
            problem(r#"{"brief": {"title": "a\u0000b"}}"#).unwrap().0,
            "brief.title"
        );
        assert_eq!(
            problem(r#"{"responses": [{"x": 1}, {"freeformText": "\u0000"}]}"#)
                .unwrap()
                .0,
            "responses[1].freeformText"
        );
        assert_eq!(
            problem(r#"{"plan": {"nodes": [{}, {"prompt": "\u0000"}]}}"#)
                .unwrap()
                .0,
            "plan.nodes[1].prompt"
        );
        assert_eq!(problem(r#"{"k\u0000": 1}"#).unwrap().0, "k\\u0000");
        assert_eq!(problem(r#"["\u0000"]"#).unwrap().0, "[0]");
    }

    #[test]
    fn duplicate_keys_and_huge_integers_are_refused() {
        assert_eq!(
            problem(r#"{"plan": {"nodes": [{"capability": "set", "capability": "fail"}]}}"#),
            Some((
                "plan.nodes[0].capability".to_owned(),
                "is given more than once"
            ))
        );
        assert_eq!(
            problem(r#"{"executionContext": {"n": 18446744073709551616}}"#),
            Some((
                "executionContext.n".to_owned(),
                "is an integer beyond 64 bits"
            ))
        );
        assert_eq!(problem(r#"{"x": -9223372036854775809}"#).unwrap().0, "x");
    }
}
