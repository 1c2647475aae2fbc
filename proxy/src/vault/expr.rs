//! The `{{ ... }}` expression language, pure: bytes in, expression spans and byte offsets out,
//! no I/O and no token look-ups. [`super::detokenize`] runs it over each part of a request and
//! splices token data into the spans it returns.
//!
//! ```text
//! expr    = "{{" ws id ws [ "|" ws "json" ws ":" ws pointer ws ] "}}"
//! id      = 1*128 ( ALPHA / DIGIT / "." / "_" / "-" )
//! pointer = '"' chars '"'  /  '\"' chars '\"'      ; the second form as written inside a JSON string
//! chars   = *1024 ( any byte except '"', '\' and control characters ) ; "" or starting with "/"
//! ws      = *( " " / "\t" )
//! ```
//!
//! Every `{{` opens an expression: one that does not follow the grammar is an error with the
//! offset of the first byte that does not fit, never text passed on as is, so a typo cannot
//! send a half-swapped request upstream. Work and memory are linear in the input and the
//! number of expressions is capped by the caller's budget.

use std::ops::Range;

/// Longest token id.
pub const MAX_ID_LEN: usize = 128;
/// Longest JSON pointer.
pub const MAX_POINTER_LEN: usize = 1024;

/// One expression found in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expr<'a> {
    /// From the first `{` to the last `}`.
    pub span: Range<usize>,
    /// The token id.
    pub id: &'a str,
    /// The JSON pointer of a `json` filter.
    pub pointer: Option<&'a str>,
}

/// Why the input cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// A malformed expression: the offset of the first byte that does not fit, and what was expected.
    Invalid {
        /// Byte offset into the input.
        offset: usize,
        /// What the grammar expected there.
        reason: &'static str,
    },
    /// More expressions than the budget allows.
    TooMany,
}

/// Every expression in `input`, in order; [`ParseError::TooMany`] as soon as there are more
/// than `budget`.
pub fn parse(input: &[u8], budget: usize) -> Result<Vec<Expr<'_>>, ParseError> {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(start) = find_open(input, at) {
        if found.len() == budget {
            return Err(ParseError::TooMany);
        }
        let expr = parse_one(input, start)?;
        at = expr.span.end;
        found.push(expr);
    }
    Ok(found)
}

/// Whether `input` has anything [`parse`] would look at.
pub fn has_open(input: &[u8]) -> bool {
    find_open(input, 0).is_some()
}

fn find_open(input: &[u8], from: usize) -> Option<usize> {
    input.get(from..)?.windows(2).position(|w| w == b"{{").map(|p| p + from)
}

struct Cursor<'a> {
    input: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.at).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, literal: &[u8]) -> bool {
        if self.input[self.at..].starts_with(literal) {
            self.at += literal.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, literal: &[u8], reason: &'static str) -> Result<(), ParseError> {
        if self.eat(literal) {
            Ok(())
        } else {
            Err(self.error(reason))
        }
    }

    fn error(&self, reason: &'static str) -> ParseError {
        ParseError::Invalid {
            offset: self.at,
            reason,
        }
    }

    /// Bytes while `ok` holds, at most `max`; an error if there are more.
    fn take_while(
        &mut self,
        max: usize,
        too_long: &'static str,
        ok: impl Fn(u8) -> bool,
    ) -> Result<&'a str, ParseError> {
        let start = self.at;
        while self.peek().is_some_and(&ok) {
            if self.at - start == max {
                return Err(self.error(too_long));
            }
            self.at += 1;
        }
        // Only ASCII bytes pass `ok` for ids, and pointers exclude no byte of a UTF-8 sequence,
        // so this fails only for invalid UTF-8 in a pointer.
        std::str::from_utf8(&self.input[start..self.at]).map_err(|e| ParseError::Invalid {
            offset: start + e.valid_up_to(),
            reason: "the JSON pointer is not UTF-8",
        })
    }
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

fn parse_one(input: &[u8], start: usize) -> Result<Expr<'_>, ParseError> {
    let mut c = Cursor { input, at: start + 2 };
    c.skip_ws();
    let id = c.take_while(MAX_ID_LEN, "the token id is longer than 128 characters", is_id_byte)?;
    if id.is_empty() {
        return Err(c.error("expected a token id (letters, digits, '.', '_', '-')"));
    }
    c.skip_ws();
    let mut pointer = None;
    if c.eat(b"|") {
        c.skip_ws();
        c.expect(b"json", "expected the filter json")?;
        c.skip_ws();
        c.expect(b":", "expected ':' after json")?;
        c.skip_ws();
        // Inside a JSON string the pointer's quotes arrive escaped; either form is one grammar.
        let quote: &[u8] = if c.eat(b"\\\"") {
            b"\\\""
        } else if c.eat(b"\"") {
            b"\""
        } else {
            return Err(c.error("expected a quoted JSON pointer, e.g. \"/number\""));
        };
        let p = c.take_while(MAX_POINTER_LEN, "the JSON pointer is longer than 1024 bytes", |b| {
            b >= 0x20 && b != b'"' && b != b'\\'
        })?;
        if !p.is_empty() && !p.starts_with('/') {
            return Err(ParseError::Invalid {
                offset: c.at - p.len(),
                reason: "a JSON pointer is empty or starts with '/'",
            });
        }
        c.expect(quote, "expected the closing quote of the JSON pointer")?;
        c.skip_ws();
        pointer = Some(p);
    }
    c.expect(b"}}", "expected '}}' or '| json: \"<pointer>\"'")?;
    Ok(Expr {
        span: start..c.at,
        id,
        pointer,
    })
}

/// `input` with each range replaced by its bytes; ranges in order and not overlapping. With
/// no edits the output is the input, byte for byte.
pub fn splice<R: AsRef<[u8]>>(input: &[u8], edits: impl IntoIterator<Item = (Range<usize>, R)>) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut at = 0;
    for (range, bytes) in edits {
        out.extend_from_slice(&input[at..range.start]);
        out.extend_from_slice(bytes.as_ref());
        at = range.end;
    }
    out.extend_from_slice(&input[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    fn one(input: &str) -> Result<(Range<usize>, String, Option<String>), ParseError> {
        let found = parse(input.as_bytes(), 100)?;
        assert_eq!(found.len(), 1, "{input}");
        let e = &found[0];
        Ok((e.span.clone(), e.id.to_string(), e.pointer.map(str::to_string)))
    }

    fn invalid(offset: usize, reason: &'static str) -> ParseError {
        ParseError::Invalid { offset, reason }
    }

    const ID: &str = "26818785-547b-4b28-b0fa-531377e99f4e";

    #[test]
    fn valid_expressions() {
        let cases: &[(&str, std::ops::Range<usize>, &str, Option<&str>)] = &[
            ("{{tok}}", 0..7, "tok", None),
            ("{{ tok }}", 0..9, "tok", None),
            ("a {{\ttok_1.x-y\t}} b", 2..17, "tok_1.x-y", None),
            ("{{ 26818785-547b-4b28-b0fa-531377e99f4e }}", 0..42, ID, None),
            ("{{ card | json: \"/number\" }}", 0..28, "card", Some("/number")),
            ("{{card|json:\"/a/b~1c\"}}", 0..23, "card", Some("/a/b~1c")),
            ("{{ card | json: \\\"/number\\\" }}", 0..30, "card", Some("/number")),
            ("{{ card | json: \"\" }}", 0..21, "card", Some("")),
            ("{{ c | json: \"/名前\" }}", 0..25, "c", Some("/名前")),
            ("}} {{a}}", 3..8, "a", None),
        ];
        for (input, span, id, pointer) in cases {
            assert_eq!(
                one(input),
                Ok((span.clone(), id.to_string(), pointer.map(str::to_string))),
                "{input}"
            );
        }
    }

    #[test]
    fn malformed_expressions_name_the_offset() {
        let long_id = format!("{{{{{}}}}}", "a".repeat(129));
        let long_pointer = format!("{{{{a | json: \"/{}\"}}}}", "p".repeat(1024));
        let cases: &[(&str, ParseError)] = &[
            ("{{", invalid(2, "expected a token id (letters, digits, '.', '_', '-')")),
            (
                "x {{ }}",
                invalid(5, "expected a token id (letters, digits, '.', '_', '-')"),
            ),
            (
                "{{{tok}}}",
                invalid(2, "expected a token id (letters, digits, '.', '_', '-')"),
            ),
            ("{{tok", invalid(5, "expected '}}' or '| json: \"<pointer>\"'")),
            ("{{tok}", invalid(5, "expected '}}' or '| json: \"<pointer>\"'")),
            ("{{to k}}", invalid(5, "expected '}}' or '| json: \"<pointer>\"'")),
            ("{{tok | }}", invalid(8, "expected the filter json")),
            ("{{tok | upper }}", invalid(8, "expected the filter json")),
            ("{{tok | json \"/a\" }}", invalid(13, "expected ':' after json")),
            (
                "{{tok | json: /a }}",
                invalid(14, "expected a quoted JSON pointer, e.g. \"/number\""),
            ),
            (
                "{{tok | json: \"a\" }}",
                invalid(15, "a JSON pointer is empty or starts with '/'"),
            ),
            (
                "{{tok | json: \"/a }}",
                invalid(20, "expected the closing quote of the JSON pointer"),
            ),
            (
                "{{tok | json: \\\"/a\" }}",
                invalid(18, "expected the closing quote of the JSON pointer"),
            ),
            (
                "{{tok | json: \"/a\\n\" }}",
                invalid(17, "expected the closing quote of the JSON pointer"),
            ),
            (
                "{{tok | json: \"/a\" ",
                invalid(19, "expected '}}' or '| json: \"<pointer>\"'"),
            ),
            (&long_id, invalid(130, "the token id is longer than 128 characters")),
            (
                &long_pointer,
                invalid(1037, "the JSON pointer is longer than 1024 bytes"),
            ),
            (
                "ok {{a}} then {{b",
                invalid(17, "expected '}}' or '| json: \"<pointer>\"'"),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(parse(input.as_bytes(), 100).unwrap_err(), *expected, "{input}");
        }
        assert_eq!(
            parse(b"{{a | json: \"/\xff\"}}", 100).unwrap_err(),
            invalid(14, "the JSON pointer is not UTF-8")
        );
    }

    #[test]
    fn the_budget_counts_expressions() {
        let three = b"{{a}}{{b}}{{c}}";
        assert_eq!(parse(three, 3).unwrap().len(), 3);
        assert_eq!(parse(three, 2).unwrap_err(), ParseError::TooMany);
        assert_eq!(parse(b"no expressions", 0).unwrap(), vec![]);
    }

    #[test]
    fn splice_replaces_spans_only() {
        let input = b"a {{x}} b {{ y | json: \"/k\" }} c";
        let exprs = parse(input, 10).unwrap();
        let out = splice(
            input,
            exprs
                .iter()
                .map(|e| (e.span.clone(), format!("<{}{}>", e.id, e.pointer.unwrap_or("")))),
        );
        assert_eq!(out, b"a <x> b <y/k> c");
    }

    /// Random inputs biased towards the grammar's own bytes, so that many contain expressions,
    /// near-expressions and every error path.
    fn random_input(rng: &mut Rng) -> Vec<u8> {
        const PIECES: &[&[u8]] = &[
            b"{{",
            b"}}",
            b"{",
            b"}",
            b"|",
            b" json",
            b":",
            b"\"",
            b"\\\"",
            b"/",
            b" ",
            b"\t",
            b"tok",
            b"a-1",
            b"\\",
            b"\n",
            b"\xff",
            b"\xe5\x90\x8d",
        ];
        let len = rng.below(40);
        let mut out = Vec::new();
        for _ in 0..len {
            if rng.below(4) == 0 {
                out.push(rng.next() as u8);
            } else {
                out.extend_from_slice(PIECES[rng.below(PIECES.len())]);
            }
        }
        out
    }

    #[test]
    fn random_inputs_never_panic_and_stay_bounded() {
        for seed in 1..=50_000u64 {
            let mut rng = Rng::seeded(seed);
            let input = random_input(&mut rng);
            let budget = rng.below(5);
            match parse(&input, budget) {
                Ok(found) => {
                    assert!(found.len() <= budget, "seed {seed}");
                    let mut end = 0;
                    for e in &found {
                        assert!(e.span.start >= end && e.span.end <= input.len(), "seed {seed}");
                        assert!(input[e.span.clone()].starts_with(b"{{"), "seed {seed}");
                        assert!(input[e.span.clone()].ends_with(b"}}"), "seed {seed}");
                        end = e.span.end;
                    }
                    // Rendering nothing removes exactly the spans.
                    let rest = splice(&input, found.iter().map(|e| (e.span.clone(), b"")));
                    assert_eq!(
                        rest.len(),
                        input.len() - found.iter().map(|e| e.span.len()).sum::<usize>()
                    );
                    if found.is_empty() {
                        assert!(!has_open(&input), "seed {seed}");
                        assert_eq!(
                            splice(&input, Vec::<(Range<usize>, &[u8])>::new()),
                            input,
                            "seed {seed}"
                        );
                    }
                }
                Err(ParseError::Invalid { offset, .. }) => {
                    assert!(offset <= input.len(), "seed {seed}");
                    assert!(has_open(&input), "seed {seed}");
                }
                Err(ParseError::TooMany) => assert!(has_open(&input), "seed {seed}"),
            }
        }
    }

    #[test]
    fn random_expressions_round_trip() {
        const ID_BYTES: &[u8] = b"abcXYZ019._-";
        for seed in 1..=20_000u64 {
            let mut rng = Rng::seeded(seed);
            let mut input = Vec::new();
            let mut expected = Vec::new();
            for _ in 0..rng.below(6) {
                // Filler without braces, then an expression in one of its spellings.
                for _ in 0..rng.below(8) {
                    input.push(b"ab \"\\:|/\n}"[rng.below(10)]);
                }
                let id: String = (0..1 + rng.below(20))
                    .map(|_| ID_BYTES[rng.below(ID_BYTES.len())] as char)
                    .collect();
                let pointer = (rng.below(2) == 0).then(|| format!("/k{}/{}", rng.below(99), rng.below(9)));
                let ws = [" ", "", "\t "][rng.below(3)];
                let quote = ["\"", "\\\""][rng.below(2)];
                let text = match &pointer {
                    None => format!("{{{{{ws}{id}{ws}}}}}"),
                    Some(p) => format!("{{{{{ws}{id}{ws}|{ws}json{ws}:{ws}{quote}{p}{quote}{ws}}}}}"),
                };
                input.extend_from_slice(text.as_bytes());
                expected.push((id, pointer));
            }
            let found = parse(&input, 10)
                .unwrap_or_else(|e| panic!("seed {seed}: {e:?} in {:?}", String::from_utf8_lossy(&input)));
            let got: Vec<(String, Option<String>)> = found
                .iter()
                .map(|e| (e.id.to_string(), e.pointer.map(str::to_string)))
                .collect();
            assert_eq!(got, expected, "seed {seed}");
        }
    }
}
