//! Gloo's `booleanExpr`: config names combined with `&&`, `||`, `!` and parentheses. The
//! evaluator (in meshguard-authn) goes left to right with short-circuit, so a step whose value
//! is not needed is not run.
//!
//! Precedence, as in Go and Gloo: `!` binds tightest, then `&&`, then `||`.

/// A parsed expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoolExpr {
    Step(String),
    Not(Box<BoolExpr>),
    And(Box<BoolExpr>, Box<BoolExpr>),
    Or(Box<BoolExpr>, Box<BoolExpr>),
}

/// Why a `booleanExpr` does not parse; the column is 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoolExprError {
    #[error("unexpected `{found}` at column {col}")]
    UnexpectedChar { found: char, col: usize },
    #[error("nested more than {max} levels")]
    TooDeep { max: usize },
    #[error("missing `)` at column {col}")]
    MissingClose { col: usize },
    /// `token` is the token as written (`)`, `&&`, a step name).
    #[error("unexpected `{token}` at column {col}")]
    UnexpectedToken { token: String, col: usize },
    #[error("the expression ends too early")]
    EndsEarly,
    #[error("unexpected text at column {col}")]
    TrailingText { col: usize },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Name(String),
    And,
    Or,
    Not,
    Open,
    Close,
}

impl Tok {
    /// The token as it is written in an expression.
    fn as_text(&self) -> &str {
        match self {
            Tok::Name(n) => n,
            Tok::And => "&&",
            Tok::Or => "||",
            Tok::Not => "!",
            Tok::Open => "(",
            Tok::Close => ")",
        }
    }
}

fn lex(s: &str) -> Result<Vec<(usize, Tok)>, BoolExprError> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => {
                out.push((i, Tok::Open));
                i += 1
            }
            b')' => {
                out.push((i, Tok::Close));
                i += 1
            }
            b'!' => {
                out.push((i, Tok::Not));
                i += 1
            }
            b'&' if b.get(i + 1) == Some(&b'&') => {
                out.push((i, Tok::And));
                i += 2
            }
            b'|' if b.get(i + 1) == Some(&b'|') => {
                out.push((i, Tok::Or));
                i += 2
            }
            c if c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'.' => {
                let start = i;
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'_' | b'-' | b'.'))
                {
                    i += 1;
                }
                out.push((start, Tok::Name(s[start..i].to_owned())));
            }
            _ => {
                return Err(BoolExprError::UnexpectedChar {
                    found: s[i..].chars().next().unwrap_or('?'),
                    col: i + 1,
                })
            }
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    depth: usize,
}

const MAX_DEPTH: usize = 64;

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.1)
    }

    fn col(&self) -> usize {
        self.toks.get(self.pos).map(|t| t.0 + 1).unwrap_or(0)
    }

    fn or(&mut self) -> Result<BoolExpr, BoolExprError> {
        let mut left = self.and()?;
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            left = BoolExpr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<BoolExpr, BoolExprError> {
        let mut left = self.unary()?;
        while self.peek() == Some(&Tok::And) {
            self.pos += 1;
            left = BoolExpr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<BoolExpr, BoolExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(BoolExprError::TooDeep { max: MAX_DEPTH });
        }
        let r = match self.peek().cloned() {
            Some(Tok::Not) => {
                self.pos += 1;
                Ok(BoolExpr::Not(Box::new(self.unary()?)))
            }
            Some(Tok::Open) => {
                self.pos += 1;
                let e = self.or()?;
                if self.peek() != Some(&Tok::Close) {
                    return Err(BoolExprError::MissingClose { col: self.col() });
                }
                self.pos += 1;
                Ok(e)
            }
            Some(Tok::Name(n)) => {
                self.pos += 1;
                Ok(BoolExpr::Step(n))
            }
            Some(t) => Err(BoolExprError::UnexpectedToken {
                token: t.as_text().to_owned(),
                col: self.col(),
            }),
            None => Err(BoolExprError::EndsEarly),
        };
        self.depth -= 1;
        r
    }
}

impl BoolExpr {
    pub fn parse(s: &str) -> Result<BoolExpr, BoolExprError> {
        let mut p = Parser {
            toks: lex(s)?,
            pos: 0,
            depth: 0,
        };
        let e = p.or()?;
        if p.pos != p.toks.len() {
            return Err(BoolExprError::TrailingText { col: p.col() });
        }
        Ok(e)
    }

    /// Every step name the expression mentions.
    pub fn names(&self) -> Vec<&str> {
        match self {
            BoolExpr::Step(n) => vec![n.as_str()],
            BoolExpr::Not(e) => e.names(),
            BoolExpr::And(a, b) | BoolExpr::Or(a, b) => {
                let mut v = a.names();
                v.extend(b.names());
                v
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_and_errors() {
        let e = BoolExpr::parse("( basic1 || basic2 || (oidc1 && !oidc2) )").expect("parse");
        assert_eq!(e.names(), ["basic1", "basic2", "oidc1", "oidc2"]);
        assert_eq!(
            BoolExpr::parse("a || b && c").expect("parse"),
            BoolExpr::Or(
                Box::new(BoolExpr::Step("a".into())),
                Box::new(BoolExpr::And(
                    Box::new(BoolExpr::Step("b".into())),
                    Box::new(BoolExpr::Step("c".into()))
                ))
            )
        );
        for bad in ["", "a &&", "(a", "a b", "a & b", "a ||| b", "!", ")"] {
            assert!(BoolExpr::parse(bad).is_err(), "{bad}");
        }
        assert!(BoolExpr::parse(&format!("{}a{}", "(".repeat(100), ")".repeat(100))).is_err());
    }

    /// The messages are shown to users (AuthConfig diagnostics) and must not change.
    #[test]
    fn error_messages() {
        let msg = |s: &str| BoolExpr::parse(s).map(|_| ()).unwrap_err().to_string();
        assert_eq!(msg("a & b"), "unexpected `&` at column 3");
        assert_eq!(msg("(a"), "missing `)` at column 0");
        assert_eq!(msg("(a b"), "missing `)` at column 4");
        assert_eq!(msg(""), "the expression ends too early");
        assert_eq!(msg("a b"), "unexpected text at column 3");
        assert_eq!(msg(")"), "unexpected `)` at column 1");
        assert_eq!(msg("a && ||"), "unexpected `||` at column 6");
        assert_eq!(
            msg(&format!("{}a{}", "(".repeat(100), ")".repeat(100))),
            "nested more than 64 levels"
        );
    }
}
