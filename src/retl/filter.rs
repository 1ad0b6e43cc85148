//! The `filter` of a `delta` model: conditions on columns joined by `AND`, evaluated on
//! each row as it is read.
//!
//! ```text
//! is_deleted = false AND email IS NOT NULL AND plan != 'free' AND amount >= 1000
//! ```
//!
//! A condition is `column IS NULL`, `column IS NOT NULL`, or `column OP literal` with `OP`
//! one of `= != <> < <= > >=` and the literal a single-quoted string (`''` for a quote), a
//! number, `true` or `false`. As in SQL, a comparison with a null (or a value of another
//! kind) is false. Strings compare by bytes, so ISO 8601 timestamps compare by time.

use serde_json::Value;

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq)]
struct Condition {
    column: String,
    test: Test,
}

#[derive(Debug, Clone, PartialEq)]
enum Test {
    IsNull,
    IsNotNull,
    Compare(Op, Literal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
enum Literal {
    Text(String),
    Number(f64),
    Bool(bool),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Text(String),
    Op(Op),
}

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err("a quoted string is not closed".into()),
                    Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                        s.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(c) => {
                        s.push(*c);
                        i += 1;
                    }
                }
            }
            out.push(Token::Text(s));
        } else if "=!<>".contains(c) {
            let next = chars.get(i + 1).copied();
            let (op, len) = match (c, next) {
                ('=', _) => (Op::Eq, 1),
                ('!', Some('=')) => (Op::Ne, 2),
                ('<', Some('>')) => (Op::Ne, 2),
                ('<', Some('=')) => (Op::Le, 2),
                ('<', _) => (Op::Lt, 1),
                ('>', Some('=')) => (Op::Ge, 2),
                ('>', _) => (Op::Gt, 1),
                _ => return Err(format!("unexpected `{c}`")),
            };
            out.push(Token::Op(op));
            i += len;
        } else if c == '"' {
            // A quoted column name.
            let start = i + 1;
            let Some(len) = chars[start..].iter().position(|c| *c == '"') else {
                return Err("a quoted column name is not closed".into());
            };
            out.push(Token::Word(chars[start..start + len].iter().collect()));
            // Mark it quoted by keeping it as a word; keywords are matched unquoted only.
            i = start + len + 1;
        } else if c.is_alphanumeric() || "_.-+".contains(c) {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || "_.-+".contains(chars[i])) {
                i += 1;
            }
            out.push(Token::Word(chars[start..i].iter().collect()));
        } else {
            return Err(format!("unexpected `{c}`"));
        }
    }
    Ok(out)
}

impl Filter {
    /// Parses `text`; the error says what was expected where.
    pub fn parse(text: &str) -> Result<Filter, String> {
        let tokens = tokens(text)?;
        let mut conditions = Vec::new();
        let mut rest = tokens.as_slice();
        loop {
            let Some((Token::Word(column), after)) = rest.split_first() else {
                return Err(
                    "expected a column name, e.g. \"is_deleted = false AND email IS NOT NULL\""
                        .into(),
                );
            };
            rest = after;
            let test = match rest {
                [Token::Word(is), Token::Word(null), tail @ ..]
                    if is.eq_ignore_ascii_case("is") && null.eq_ignore_ascii_case("null") =>
                {
                    rest = tail;
                    Test::IsNull
                }
                [
                    Token::Word(is),
                    Token::Word(not),
                    Token::Word(null),
                    tail @ ..,
                ] if is.eq_ignore_ascii_case("is")
                    && not.eq_ignore_ascii_case("not")
                    && null.eq_ignore_ascii_case("null") =>
                {
                    rest = tail;
                    Test::IsNotNull
                }
                [Token::Op(op), literal, tail @ ..] => {
                    rest = tail;
                    let literal = match literal {
                        Token::Text(s) => Literal::Text(s.clone()),
                        Token::Word(w) if w.eq_ignore_ascii_case("true") => Literal::Bool(true),
                        Token::Word(w) if w.eq_ignore_ascii_case("false") => Literal::Bool(false),
                        Token::Word(w) => match w.parse::<f64>() {
                            Ok(n) if n.is_finite() => Literal::Number(n),
                            _ => {
                                return Err(format!(
                                    "after `{column}` and its operator: expected a number, 'text', true or false"
                                ));
                            }
                        },
                        Token::Op(_) => {
                            return Err(format!("two operators in a row after `{column}`"));
                        }
                    };
                    Test::Compare(*op, literal)
                }
                _ => {
                    return Err(format!(
                        "after `{column}`: expected IS NULL, IS NOT NULL or an operator (= != <> < <= > >=) and a value"
                    ));
                }
            };
            conditions.push(Condition {
                column: column.clone(),
                test,
            });
            match rest {
                [] => break,
                [Token::Word(and), tail @ ..] if and.eq_ignore_ascii_case("and") => rest = tail,
                _ => return Err("conditions are joined by AND (OR is not supported)".into()),
            }
        }
        Ok(Filter { conditions })
    }

    /// The columns the filter reads.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.conditions.iter().map(|c| c.column.as_str())
    }

    /// Whether the row (a JSON object of its columns) passes every condition.
    pub fn matches(&self, row: &serde_json::Map<String, Value>) -> bool {
        self.conditions.iter().all(|c| {
            let value = row.get(&c.column).unwrap_or(&Value::Null);
            match &c.test {
                Test::IsNull => value.is_null(),
                Test::IsNotNull => !value.is_null(),
                Test::Compare(op, literal) => {
                    let ordering = match (value, literal) {
                        (Value::String(s), Literal::Text(t)) => s.as_str().cmp(t.as_str()),
                        (Value::Number(n), Literal::Number(m)) => {
                            match n.as_f64().and_then(|n| n.partial_cmp(m)) {
                                Some(o) => o,
                                None => return false,
                            }
                        }
                        (Value::Bool(b), Literal::Bool(l)) => b.cmp(l),
                        _ => return false,
                    };
                    use std::cmp::Ordering::*;
                    match op {
                        Op::Eq => ordering == Equal,
                        Op::Ne => ordering != Equal,
                        Op::Lt => ordering == Less,
                        Op::Le => ordering != Greater,
                        Op::Gt => ordering == Greater,
                        Op::Ge => ordering != Less,
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn conditions_joined_by_and() {
        let f = Filter::parse(
            "is_deleted = false AND email IS NOT NULL and plan != 'free' AND amount >= 1000",
        )
        .unwrap();
        assert_eq!(
            f.columns().collect::<Vec<_>>(),
            ["is_deleted", "email", "plan", "amount"]
        );
        let ok = row(json!({"is_deleted": false, "email": "a@b", "plan": "pro", "amount": 1000}));
        assert!(f.matches(&ok));
        let mut no = ok.clone();
        no.insert("email".into(), Value::Null);
        assert!(!f.matches(&no));
        let mut no = ok.clone();
        no.insert("plan".into(), json!("free"));
        assert!(!f.matches(&no));
        let mut no = ok.clone();
        no.insert("amount".into(), json!(999.5));
        assert!(!f.matches(&no));
        // A missing column reads as null; a comparison with null is false.
        let mut no = ok;
        no.remove("is_deleted");
        assert!(!f.matches(&no));
    }

    #[test]
    fn quotes_timestamps_and_errors() {
        let f = Filter::parse("name = 'O''Brien' AND \"created at\" < '2024-02-01'").unwrap();
        assert!(f.matches(&row(
            json!({"name": "O'Brien", "created at": "2024-01-31T23:59:59Z"})
        )));
        assert!(!f.matches(&row(
            json!({"name": "O'Brien", "created at": "2024-02-01T00:00:00Z"})
        )));
        for (bad, says) in [
            ("", "expected a column name"),
            ("a = ", "expected IS NULL"),
            ("a = 1 OR b = 2", "joined by AND"),
            ("a = 'x", "not closed"),
            ("a = b", "expected a number"),
            ("a IS", "expected IS NULL"),
            ("a ; b", "unexpected `;`"),
        ] {
            let e = Filter::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
