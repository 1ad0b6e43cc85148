//! The SOQL subset the connector sends, parsed and evaluated as Salesforce would:
//! `SELECT f, … | COUNT() FROM Object [WHERE …] [ORDER BY f [ASC|DESC], …] [LIMIT n]`, with
//! `AND`, `OR`, `NOT`, parentheses, `= != <> < <= > >=` and `[NOT] IN (…)` against `null`,
//! `true`/`false`, numbers, `'quoted strings'`, unquoted dateTime literals
//! (`2024-05-01T12:00:00Z`) and date literals (`2024-05-01`). As in Salesforce, a dateTime
//! field only compares with an unquoted dateTime literal.

use std::cmp::Ordering;

use chrono::{DateTime, NaiveDate};
use serde_json::Value;

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Query {
    pub(crate) selection: Selection,
    pub(crate) object: String,
    pub(crate) filter: Option<Expr>,
    /// `(field, ascending)`.
    pub(crate) order: Vec<(String, bool)>,
    pub(crate) limit: Option<usize>,
}

/// What the query returns.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Selection {
    Count,
    Fields(Vec<String>),
}

/// A `WHERE` condition.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Cmp {
        field: String,
        op: Op,
        value: Literal,
    },
    /// `field IN (a, b, …)`, or `NOT IN` when `negated`.
    In {
        field: String,
        values: Vec<Literal>,
        negated: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A literal of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Literal {
    Null,
    Bool(bool),
    Number(f64),
    Text(String),
    /// Microseconds since the epoch.
    DateTime(i64),
    /// `YYYY-MM-DD`.
    Date(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Sym(&'static str),
}

fn tokenize(soql: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = soql.chars().collect();
    let mut out = Vec::new();
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
                    None => return Err("unterminated string literal".into()),
                    Some('\\') => {
                        if let Some(next) = chars.get(i + 1) {
                            s.push(*next);
                        }
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(other) => {
                        s.push(*other);
                        i += 1;
                    }
                }
            }
            out.push(Tok::Str(s));
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], ':' | '.' | '+' | '-'))
            {
                i += 1;
            }
            out.push(Tok::Word(chars[start..i].iter().collect()));
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | '.'))
            {
                i += 1;
            }
            out.push(Tok::Word(chars[start..i].iter().collect()));
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let sym = match two.as_str() {
                "!=" => Some("!="),
                "<>" => Some("!="),
                "<=" => Some("<="),
                ">=" => Some(">="),
                _ => None,
            };
            if let Some(sym) = sym {
                out.push(Tok::Sym(sym));
                i += 2;
                continue;
            }
            let sym = match c {
                '(' => "(",
                ')' => ")",
                ',' => ",",
                '=' => "=",
                '<' => "<",
                '>' => ">",
                other => return Err(format!("unexpected character: '{other}'")),
            };
            out.push(Tok::Sym(sym));
            i += 1;
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn keyword(&mut self, kw: &str) -> bool {
        match self.peek() {
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw) => {
                self.pos += 1;
                true
            }
            _ => false,
        }
    }

    fn expect_keyword(&mut self, kw: &str) -> Result<(), String> {
        if self.keyword(kw) {
            Ok(())
        } else {
            Err(format!("unexpected token: {}", self.describe_next()))
        }
    }

    fn symbol(&mut self, sym: &str) -> bool {
        match self.peek() {
            Some(Tok::Sym(s)) if *s == sym => {
                self.pos += 1;
                true
            }
            _ => false,
        }
    }

    fn describe_next(&self) -> String {
        match self.peek() {
            None => "<EOF>".into(),
            Some(Tok::Word(w)) => w.clone(),
            Some(Tok::Str(s)) => format!("'{s}'"),
            Some(Tok::Sym(s)) => (*s).to_owned(),
        }
    }

    fn ident(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Tok::Word(w)) if w.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') => {
                Ok(w)
            }
            _ => {
                self.pos -= 1;
                Err(format!("unexpected token: {}", self.describe_next()))
            }
        }
    }

    fn expr(&mut self) -> Result<Expr, String> {
        let mut left = self.term()?;
        while self.keyword("OR") {
            left = Expr::Or(Box::new(left), Box::new(self.term()?));
        }
        Ok(left)
    }

    fn term(&mut self) -> Result<Expr, String> {
        let mut left = self.factor()?;
        while self.keyword("AND") {
            left = Expr::And(Box::new(left), Box::new(self.factor()?));
        }
        Ok(left)
    }

    fn factor(&mut self) -> Result<Expr, String> {
        if self.keyword("NOT") {
            return Ok(Expr::Not(Box::new(self.factor()?)));
        }
        if self.symbol("(") {
            let e = self.expr()?;
            if !self.symbol(")") {
                return Err(format!("unexpected token: {}", self.describe_next()));
            }
            return Ok(e);
        }
        let field = self.ident()?;
        // `field [NOT] IN (literal, …)`, e.g. `Id IN ('001…', '001…')`
        // (https://developer.salesforce.com/docs/platform/salesforce-soql-sosl/guide/sforce-api-calls-soql-select-comparisonoperators.html).
        let negated = if self.keyword("NOT") {
            self.expect_keyword("IN")?;
            Some(true)
        } else if self.keyword("IN") {
            Some(false)
        } else {
            None
        };
        if let Some(negated) = negated {
            if !self.symbol("(") {
                return Err(format!("unexpected token: {}", self.describe_next()));
            }
            let mut values = Vec::new();
            loop {
                values.push(match self.next() {
                    Some(Tok::Str(s)) => Literal::Text(s),
                    Some(Tok::Word(w)) => literal(&w)?,
                    _ => {
                        self.pos -= 1;
                        return Err(format!("unexpected token: {}", self.describe_next()));
                    }
                });
                if self.symbol(")") {
                    break;
                }
                if !self.symbol(",") {
                    return Err(format!("unexpected token: {}", self.describe_next()));
                }
            }
            return Ok(Expr::In {
                field,
                values,
                negated,
            });
        }
        let op = match self.next() {
            Some(Tok::Sym("=")) => Op::Eq,
            Some(Tok::Sym("!=")) => Op::Ne,
            Some(Tok::Sym("<")) => Op::Lt,
            Some(Tok::Sym("<=")) => Op::Le,
            Some(Tok::Sym(">")) => Op::Gt,
            Some(Tok::Sym(">=")) => Op::Ge,
            _ => {
                self.pos -= 1;
                return Err(format!("unexpected token: {}", self.describe_next()));
            }
        };
        let value = match self.next() {
            Some(Tok::Str(s)) => Literal::Text(s),
            Some(Tok::Word(w)) => literal(&w)?,
            _ => {
                self.pos -= 1;
                return Err(format!("unexpected token: {}", self.describe_next()));
            }
        };
        Ok(Expr::Cmp { field, op, value })
    }
}

fn literal(word: &str) -> Result<Literal, String> {
    if word.eq_ignore_ascii_case("null") {
        return Ok(Literal::Null);
    }
    if word.eq_ignore_ascii_case("true") {
        return Ok(Literal::Bool(true));
    }
    if word.eq_ignore_ascii_case("false") {
        return Ok(Literal::Bool(false));
    }
    if word.contains('T') && word.starts_with(|c: char| c.is_ascii_digit()) {
        return parse_datetime(word)
            .map(Literal::DateTime)
            .ok_or_else(|| format!("line 1:0 no viable alternative at character '{word}'"));
    }
    if NaiveDate::parse_from_str(word, "%Y-%m-%d").is_ok() {
        return Ok(Literal::Date(word.to_owned()));
    }
    word.parse::<f64>()
        .map(Literal::Number)
        .map_err(|_| format!("unexpected token: {word}"))
}

/// Parses the datetime forms SOQL and the API use (with `Z`, `+hh:mm` or `+hhmm`), in
/// microseconds.
pub(crate) fn parse_datetime(s: &str) -> Option<i64> {
    // Every stored stamp (`2024-05-01T12:00:00.000+0000`) and every literal the connector
    // sends is UTC: read those by position, as the simulator compares one per record per
    // query (chrono's two attempts at each were most of a keyset query's time).
    if let Some(micros) = parse_utc_fast(s) {
        return Some(micros);
    }
    DateTime::parse_from_rfc3339(s)
        .or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .ok()
        .map(|t| t.timestamp_micros())
}

/// `YYYY-MM-DDTHH:MM:SS[.fff]` then `Z`, `+0000` or `+00:00`, in microseconds; `None` for
/// anything else (which the general parser then reads).
fn parse_utc_fast(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        b[from..to].iter().try_fold(0i64, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let (mut micros, mut rest) = (0i64, &b[19..]);
    if rest.first() == Some(&b'.') {
        let digits = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 6 {
            return None;
        }
        micros = num(20, 20 + digits)? * 10i64.pow(6 - digits as u32);
        rest = &rest[1 + digits..];
    }
    if !matches!(rest, b"Z" | b"+0000" | b"+00:00") {
        return None;
    }
    // Days from 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hour * 3_600 + minute * 60 + second) * 1_000_000) + micros)
}

/// Parses a query; the error is Salesforce's `MALFORMED_QUERY` message.
pub(crate) fn parse(soql: &str) -> Result<Query, String> {
    let mut p = Parser {
        toks: tokenize(soql)?,
        pos: 0,
    };
    p.expect_keyword("SELECT")?;
    let selection = if p.keyword("COUNT") {
        if !(p.symbol("(") && p.symbol(")")) {
            return Err("only COUNT() is supported".into());
        }
        Selection::Count
    } else {
        let mut fields = vec![p.ident()?];
        while p.symbol(",") {
            fields.push(p.ident()?);
        }
        Selection::Fields(fields)
    };
    p.expect_keyword("FROM")?;
    let object = p.ident()?;
    let filter = if p.keyword("WHERE") {
        Some(p.expr()?)
    } else {
        None
    };
    let mut order = Vec::new();
    if p.keyword("ORDER") {
        p.expect_keyword("BY")?;
        loop {
            let field = p.ident()?;
            let ascending = if p.keyword("DESC") {
                false
            } else {
                p.keyword("ASC");
                true
            };
            if p.keyword("NULLS") && !(p.keyword("FIRST") || p.keyword("LAST")) {
                return Err(format!("unexpected token: {}", p.describe_next()));
            }
            order.push((field, ascending));
            if !p.symbol(",") {
                break;
            }
        }
    }
    let limit = if p.keyword("LIMIT") {
        match p.next() {
            Some(Tok::Word(w)) => Some(
                w.parse::<usize>()
                    .map_err(|_| format!("unexpected token: {w}"))?,
            ),
            _ => return Err("LIMIT needs a number".into()),
        }
    } else {
        None
    };
    if p.peek().is_some() {
        return Err(format!("unexpected token: {}", p.describe_next()));
    }
    Ok(Query {
        selection,
        object,
        filter,
        order,
        limit,
    })
}

impl Expr {
    /// Every comparison, for type checks.
    pub(crate) fn comparisons<'a>(&'a self, out: &mut Vec<(&'a str, &'a Literal)>) {
        match self {
            Expr::And(a, b) | Expr::Or(a, b) => {
                a.comparisons(out);
                b.comparisons(out);
            }
            Expr::Not(e) => e.comparisons(out),
            Expr::Cmp { field, value, .. } => out.push((field, value)),
            Expr::In { field, values, .. } => {
                out.extend(values.iter().map(|value| (field.as_str(), value)))
            }
        }
    }

    /// Whether a record matches; `get` returns a field's value (fields already checked),
    /// borrowed from the record: a query tests every record of the object.
    pub(crate) fn matches<'v>(&self, get: &dyn Fn(&str) -> Option<&'v Value>) -> bool {
        match self {
            Expr::And(a, b) => a.matches(get) && b.matches(get),
            Expr::Or(a, b) => a.matches(get) || b.matches(get),
            Expr::Not(e) => !e.matches(get),
            Expr::In {
                field,
                values,
                negated,
            } => {
                let actual = get(field).filter(|v| !v.is_null());
                let found = values.iter().any(|literal| match (literal, &actual) {
                    (Literal::Null, None) => true,
                    (Literal::Null, Some(_)) | (_, None) => false,
                    (literal, Some(actual)) => compare(actual, literal) == Some(Ordering::Equal),
                });
                found != *negated
            }
            Expr::Cmp { field, op, value } => {
                let actual = get(field).filter(|v| !v.is_null());
                match (value, actual) {
                    (Literal::Null, None) => matches!(op, Op::Eq),
                    (Literal::Null, Some(_)) => matches!(op, Op::Ne),
                    (_, None) => matches!(op, Op::Ne),
                    (literal, Some(actual)) => match compare(actual, literal) {
                        Some(ord) => match op {
                            Op::Eq => ord == Ordering::Equal,
                            Op::Ne => ord != Ordering::Equal,
                            Op::Lt => ord == Ordering::Less,
                            Op::Le => ord != Ordering::Greater,
                            Op::Gt => ord == Ordering::Greater,
                            Op::Ge => ord != Ordering::Less,
                        },
                        None => false,
                    },
                }
            }
        }
    }
}

/// `actual` (a stored value) against `literal`.
fn compare(actual: &Value, literal: &Literal) -> Option<Ordering> {
    match literal {
        Literal::Null => None,
        Literal::Bool(b) => actual.as_bool().map(|a| a.cmp(b)),
        Literal::Number(n) => actual.as_f64().and_then(|a| a.partial_cmp(n)),
        Literal::Text(s) => actual.as_str().map(|a| a.cmp(s.as_str())),
        Literal::DateTime(t) => actual.as_str().and_then(parse_datetime).map(|a| a.cmp(t)),
        Literal::Date(d) => actual.as_str().map(|a| a.cmp(d.as_str())),
    }
}

/// Orders two stored values of one field (nulls first).
pub(crate) fn order_values(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    let a = a.filter(|v| !v.is_null());
    let b = b.filter(|v| !v.is_null());
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(a), Some(b)) => {
            if let (Some(x), Some(y)) = (a.as_f64(), b.as_f64()) {
                return x.partial_cmp(&y).unwrap_or(Ordering::Equal);
            }
            if let (Some(x), Some(y)) = (a.as_bool(), b.as_bool()) {
                return x.cmp(&y);
            }
            let (x, y) = (
                a.as_str().unwrap_or_default(),
                b.as_str().unwrap_or_default(),
            );
            match (parse_datetime(x), parse_datetime(y)) {
                (Some(x), Some(y)) => x.cmp(&y),
                _ => x.cmp(y),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps_parse_fast_and_like_chrono() {
        for text in [
            "2024-05-01T12:00:00.000+0000",
            "2024-02-29T23:59:59Z",
            "1999-12-31T00:00:01.5+00:00",
            "2024-05-01T12:00:00.123456Z",
            "1970-01-01T00:00:00Z",
            "2100-03-01T08:09:10.010+0000",
        ] {
            let chrono = DateTime::parse_from_rfc3339(text)
                .or_else(|_| DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z"))
                .unwrap()
                .timestamp_micros();
            assert_eq!(parse_utc_fast(text), Some(chrono), "{text}");
        }
        // Other offsets and malformed text go to chrono.
        assert_eq!(parse_utc_fast("2024-05-01T12:00:00+0200"), None);
        assert_eq!(parse_utc_fast("2024-13-01T12:00:00Z"), None);
        assert_eq!(
            parse_datetime("2024-05-01T14:00:00+0200"),
            parse_datetime("2024-05-01T12:00:00Z")
        );
    }

    #[test]
    fn parses_what_the_connector_sends() {
        let q = parse(
            "SELECT Id, Name, SystemModstamp FROM Account WHERE (SystemModstamp > 2024-05-01T12:00:00Z OR (SystemModstamp = 2024-05-01T12:00:00Z AND Id > '001A')) AND SystemModstamp < 2024-06-01T00:00:00.000Z ORDER BY SystemModstamp ASC, Id ASC",
        )
        .unwrap();
        assert_eq!(q.object, "Account");
        assert_eq!(
            q.selection,
            Selection::Fields(vec!["Id".into(), "Name".into(), "SystemModstamp".into()])
        );
        assert_eq!(
            q.order,
            vec![("SystemModstamp".into(), true), ("Id".into(), true)]
        );
        let record = |stamp: &str, id: &str| -> serde_json::Map<String, Value> {
            [("SystemModstamp", stamp), ("Id", id)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), Value::from(v)))
                .collect()
        };
        let filter = q.filter.unwrap();
        let matches = |r: serde_json::Map<String, Value>| filter.matches(&|f| r.get(f));
        assert!(matches(record("2024-05-01T12:00:00.000+0000", "001B")));
        assert!(!matches(record("2024-05-01T12:00:00.000+0000", "001A")));
        assert!(matches(record("2024-05-02T00:00:00.000+0000", "0010")));
        assert!(!matches(record("2024-06-01T00:00:00.000+0000", "001Z")));

        let count = parse("select count() from Contact where IsDeleted = true").unwrap();
        assert_eq!(count.selection, Selection::Count);
        assert!(parse("SELECT Id FROM Lead LIMIT 5").unwrap().limit == Some(5));
        assert!(parse("SELECT Id FROM Lead WHERE Name = 'O\\'Brien'").is_ok());

        let within = parse("SELECT Id, Name FROM Account WHERE Id IN ('001A', '001B')").unwrap();
        let outside = parse("SELECT Id FROM Account WHERE Id NOT IN ('001A')").unwrap();
        let (within, outside) = (within.filter.unwrap(), outside.filter.unwrap());
        let id_matches = |filter: &Expr, id: &str| {
            let id = Value::from(id);
            filter.matches(&|f| (f == "Id").then_some(&id))
        };
        assert!(id_matches(&within, "001B"));
        assert!(!id_matches(&within, "001C"));
        assert!(!id_matches(&outside, "001A"));
        assert!(id_matches(&outside, "001C"));
    }

    #[test]
    fn malformed_queries_are_refused() {
        for bad in [
            "SELECT FROM Account",
            "SELECT Id Account",
            "SELECT Id FROM Account WHERE",
            "SELECT Id FROM Account WHERE Name = 'x",
            "SELECT Id FROM Account ORDER Id",
            "SELECT Id FROM Account WHERE SystemModstamp > 2024-13-45T00:00:00Z",
            "SELECT Id FROM Account extra",
            "SELECT Id FROM Account WHERE Id IN ()",
            "SELECT Id FROM Account WHERE Id IN ('a' 'b')",
            "SELECT Id FROM Account WHERE Id IN 'a'",
            "SELECT Id FROM Account WHERE Id NOT ('a')",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
