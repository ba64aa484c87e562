//! Request path normalisation, exactly as an Istio sidecar's Envoy applies it before
//! AuthorizationPolicy matching (istio.io reference/config/security/normalization; Envoy
//! `ConnectionManagerUtility::maybeNormalizePath`, `PathUtil::canonicalPath`, `mergeSlashes`,
//! `unescapeSlashes`). Order: strip `#fragment` (Istio sets `http_reject_path_with_fragment=false`),
//! decode `%2F`/`%5C` (DECODE_AND_MERGE_SLASHES only), canonicalise (BASE and up), merge slashes
//! (MERGE_SLASHES and up). The query is never changed and is not part of the matched path.

use std::fmt;

/// meshConfig `pathNormalization.normalization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathNormalization {
    None,
    #[default]
    Base,
    MergeSlashes,
    DecodeAndMergeSlashes,
}

impl PathNormalization {
    pub fn parse(s: &str) -> Option<PathNormalization> {
        Some(match s {
            "NONE" => PathNormalization::None,
            "BASE" | "DEFAULT" => PathNormalization::Base,
            "MERGE_SLASHES" => PathNormalization::MergeSlashes,
            "DECODE_AND_MERGE_SLASHES" => PathNormalization::DecodeAndMergeSlashes,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PathNormalization::None => "NONE",
            PathNormalization::Base => "BASE",
            PathNormalization::MergeSlashes => "MERGE_SLASHES",
            PathNormalization::DecodeAndMergeSlashes => "DECODE_AND_MERGE_SLASHES",
        }
    }
}

/// Why a path is refused before any policy runs (Envoy answers 400 or 404).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Empty path (404 `MissingPath`).
    Empty,
    /// Does not start with `/` (404 `AbsolutePath`).
    NotAbsolute,
    /// A NUL byte, raw or `%00`, found by the canonicaliser (400 `PathNormalizationFailed`).
    Nul,
    /// Control characters, spaces or non-ASCII bytes that an HTTP/1 codec refuses (400).
    InvalidCharacter,
}

impl PathError {
    pub fn status(self) -> u16 {
        match self {
            PathError::Empty | PathError::NotAbsolute => 404,
            PathError::Nul | PathError::InvalidCharacter => 400,
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::Empty => "the request path is empty",
            PathError::NotAbsolute => "the request path does not start with `/`",
            PathError::Nul => {
                "the request path contains a NUL byte (%00), which path normalisation refuses"
            }
            PathError::InvalidCharacter => {
                "the request path contains a control character, space or non-ASCII byte"
            }
        })
    }
}

/// The result of normalising a request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath {
    /// Normalised path with the query removed: what `paths` match against.
    pub path: String,
    /// The query string without `?`, unchanged, if any.
    pub query: Option<String>,
}

/// Normalises a raw request target (`/a/../b?x=1#frag`).
pub fn normalize(raw: &str, option: PathNormalization) -> Result<NormalizedPath, PathError> {
    if raw.is_empty() {
        return Err(PathError::Empty);
    }
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if raw
        .bytes()
        .any(|b| !(b == b'\t' || b == 0x0c || (0x21..=0x7e).contains(&b)))
    {
        return Err(if raw.as_bytes().contains(&0) {
            PathError::Nul
        } else {
            PathError::InvalidCharacter
        });
    }
    // 1. The fragment is cut at the first `#` anywhere.
    let no_frag = raw.split('#').next().unwrap_or("");
    let (path_part, query) = match no_frag.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (no_frag, None),
    };
    if option == PathNormalization::None {
        return Ok(NormalizedPath {
            path: path_part.to_owned(),
            query,
        });
    }
    // 2. Escaped slashes.
    let decoded;
    let mut p = path_part;
    if option == PathNormalization::DecodeAndMergeSlashes {
        decoded = unescape_slashes(p);
        p = &decoded;
    }
    // 3. Canonicalise (dot-segment parameters, then Chromium's path canonicaliser).
    let stripped = strip_parameters_from_dot_segments(p);
    let mut out = canonicalize(&stripped)?;
    // 4. Merge slashes.
    if matches!(
        option,
        PathNormalization::MergeSlashes | PathNormalization::DecodeAndMergeSlashes
    ) {
        out = merge_slashes(&out);
    }
    Ok(NormalizedPath { path: out, query })
}

/// Envoy `unescapeSlashes`: one literal pass of `%2F`/`%2f` -> `/` and `%5C`/`%5c` -> `\`.
fn unescape_slashes(p: &str) -> String {
    let b = p.as_bytes();
    let mut out = String::with_capacity(p.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let (h, l) = (b[i + 1], b[i + 2]);
            if h == b'2' && (l == b'F' || l == b'f') {
                out.push('/');
                i += 3;
                continue;
            }
            if h == b'5' && (l == b'C' || l == b'c') {
                out.push('\\');
                i += 3;
                continue;
            }
        }
        out.push(char::from(b[i]));
        i += 1;
    }
    out
}

/// Envoy >= 1.38.4/1.39.1 (CVE-2026-73551, Istio 1.29.7/1.30.4): a segment that starts with a
/// literal `..;` or `.;` is treated as `..` or `.`.
fn strip_parameters_from_dot_segments(p: &str) -> String {
    if !p.contains(".;") {
        return p.to_owned();
    }
    p.split('/')
        .map(|seg| {
            if seg.starts_with("..;") {
                ".."
            } else if seg.starts_with(".;") {
                "."
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Decodes every `%XX` escape (one pass; malformed escapes stay as they are), lossy on bytes
/// that are not UTF-8. For parsers that need the decoded text (OPA-Envoy's `parsed_path`, query
/// values, auth bindings), not for the Envoy normalisation above, which decodes selectively.
pub fn percent_decode_lossy(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            // Bytes, not &str slices: a `%` before a multi-byte character must not panic.
            if let (Some(h), Some(l)) = (hex_val(b[i + 1]), hex_val(b[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Bytes Chromium's canonicaliser percent-escapes (uppercase hex).
fn needs_escape(b: u8) -> bool {
    !(0x20..0x7f).contains(&b)
        || matches!(
            b,
            b' ' | b'"' | b'#' | b'<' | b'>' | b'?' | b'^' | b'`' | b'{' | b'|' | b'}'
        )
}

/// Is there a dot (`.` or `%2e`) at `i`? Returns its length in input bytes.
fn dot_at(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i) {
        Some(b'.') => Some(1),
        Some(b'%') if b.get(i + 1) == Some(&b'2') && matches!(b.get(i + 2), Some(b'e' | b'E')) => {
            Some(3)
        }
        _ => None,
    }
}

fn is_slash(b: Option<&u8>) -> bool {
    matches!(b, Some(b'/' | b'\\'))
}

/// Chromium `CanonicalizePath` as Envoy uses it.
fn canonicalize(p: &str) -> Result<String, PathError> {
    let b = p.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // Dot segments are recognised only at a segment start (output ends in '/').
        if out.last() == Some(&b'/') {
            if let Some(d1) = dot_at(b, i) {
                let after1 = i + d1;
                if after1 == b.len() {
                    // "/." at the end: current directory, dropped.
                    i = after1;
                    continue;
                }
                if is_slash(b.get(after1)) {
                    i = after1 + 1;
                    continue;
                }
                if let Some(d2) = dot_at(b, after1) {
                    let after2 = after1 + d2;
                    if after2 == b.len() || is_slash(b.get(after2)) {
                        // "..": back up to the previous slash, never above the root.
                        out.pop();
                        while let Some(&c) = out.last() {
                            if c == b'/' {
                                break;
                            }
                            out.pop();
                        }
                        if out.is_empty() {
                            out.push(b'/');
                        }
                        i = if after2 == b.len() {
                            after2
                        } else {
                            after2 + 1
                        };
                        continue;
                    }
                }
            }
        }
        let c = b[i];
        match c {
            b'\\' => {
                out.push(b'/');
                i += 1;
            }
            b'%' => {
                let hv = b.get(i + 1).copied().and_then(hex_val);
                let lv = b.get(i + 2).copied().and_then(hex_val);
                match (hv, lv) {
                    (Some(h), Some(l)) => {
                        let v = h * 16 + l;
                        if v == 0 {
                            return Err(PathError::Nul);
                        }
                        if is_unreserved(v) {
                            out.push(v);
                        } else {
                            out.extend_from_slice(&b[i..i + 3]);
                        }
                        i += 3;
                    }
                    _ => {
                        // Chromium's nested-escape guard: a lone `%` that would form a valid
                        // escape with the decoded characters after it (`%%32%65` -> `%2e`) is
                        // written as `%25`, so a second normalisation changes nothing.
                        if nested_escape_follows(b, i + 1) {
                            out.extend_from_slice(b"%25");
                        } else {
                            out.push(b'%');
                        }
                        i += 1;
                    }
                }
            }
            0 => return Err(PathError::Nul),
            c if needs_escape(c) => {
                out.extend_from_slice(format!("%{c:02X}").as_bytes());
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    if out.is_empty() {
        out.push(b'/');
    }
    // Input is ASCII (checked by the caller), so the output is too.
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Reads one output character at `i` (a raw byte, or an unreserved `%HH` decoded).
fn unit_at(b: &[u8], i: usize) -> Option<(u8, usize)> {
    match b.get(i)? {
        b'%' => {
            let v = hex_val(*b.get(i + 1)?)? * 16 + hex_val(*b.get(i + 2)?)?;
            is_unreserved(v).then_some((v, 3))
        }
        c => Some((*c, 1)),
    }
}

fn nested_escape_follows(b: &[u8], i: usize) -> bool {
    let Some((c1, n1)) = unit_at(b, i) else {
        return false;
    };
    let Some((c2, n2)) = unit_at(b, i + n1) else {
        return false;
    };
    // Only when decoding produced at least one of the two hex digits.
    (n1 == 3 || n2 == 3) && c1.is_ascii_hexdigit() && c2.is_ascii_hexdigit()
}

/// Envoy `PathUtil::mergeSlashes`.
fn merge_slashes(p: &str) -> String {
    if !p.contains("//") {
        return p.to_owned();
    }
    let mut out = String::with_capacity(p.len());
    if p.starts_with('/') {
        out.push('/');
    }
    let parts: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
    out.push_str(&parts.join("/"));
    if p.ends_with('/') {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::PathNormalization::*;
    use super::*;

    fn n(p: &str, o: PathNormalization) -> String {
        match normalize(p, o) {
            Ok(x) => x.path,
            Err(e) => format!("ERR {}", e.status()),
        }
    }

    /// Expectations from istio/istio tests/integration/security/normalization_test.go and
    /// envoy test/common/http/path_utility_test.cc.
    #[test]
    fn table() {
        let rows: &[(&str, [&str; 4])] = &[
            ("/a/../b", ["/a/../b", "/b", "/b", "/b"]),
            ("/a/./b", ["/a/./b", "/a/b", "/a/b", "/a/b"]),
            ("//admin", ["//admin", "//admin", "/admin", "/admin"]),
            ("/admin/", ["/admin/", "/admin/", "/admin/", "/admin/"]),
            (
                "/%2Fadmin",
                ["/%2Fadmin", "/%2Fadmin", "/%2Fadmin", "/admin"],
            ),
            (
                "/a%2F..%2Fadmin",
                [
                    "/a%2F..%2Fadmin",
                    "/a%2F..%2Fadmin",
                    "/a%2F..%2Fadmin",
                    "/admin",
                ],
            ),
            ("/admin#x", ["/admin", "/admin", "/admin", "/admin"]),
            ("/ADMIN", ["/ADMIN", "/ADMIN", "/ADMIN", "/ADMIN"]),
            ("/a\\b", ["/a\\b", "/a/b", "/a/b", "/a/b"]),
            (
                "/a/\\/\\/\\b",
                ["/a/\\/\\/\\b", "/a//////b", "/a/b", "/a/b"],
            ),
            ("/%61dmin", ["/%61dmin", "/admin", "/admin", "/admin"]),
            (
                "/a/%2e%2e/admin",
                ["/a/%2e%2e/admin", "/admin", "/admin", "/admin"],
            ),
            ("/%2e/admin", ["/%2e/admin", "/admin", "/admin", "/admin"]),
            ("/a?x=/admin", ["/a", "/a", "/a", "/a"]),
            ("/..;/admin", ["/..;/admin", "/admin", "/admin", "/admin"]),
            ("/admin%00", ["/admin%00", "ERR 400", "ERR 400", "ERR 400"]),
            (
                "/admin;a=b",
                ["/admin;a=b", "/admin;a=b", "/admin;a=b", "/admin;a=b"],
            ),
            (
                "/.../admin",
                ["/.../admin", "/.../admin", "/.../admin", "/.../admin"],
            ),
            ("/..", ["/..", "/", "/", "/"]),
            ("/../admin", ["/../admin", "/admin", "/admin", "/admin"]),
            ("/admin/.", ["/admin/.", "/admin/", "/admin/", "/admin/"]),
            ("/admin/..", ["/admin/..", "/", "/", "/"]),
            ("/admin%2e", ["/admin%2e", "/admin.", "/admin.", "/admin."]),
            (
                "/app//../admin",
                ["/app//../admin", "/app/admin", "/app/admin", "/app/admin"],
            ),
            (
                "/app//../../admin",
                ["/app//../../admin", "/admin", "/admin", "/admin"],
            ),
            (
                "/xyz%30..//abc",
                [
                    "/xyz%30..//abc",
                    "/xyz0..//abc",
                    "/xyz0../abc",
                    "/xyz0../abc",
                ],
            ),
            ("/app/%2f", ["/app/%2f", "/app/%2f", "/app/%2f", "/app/"]),
            (
                "/a%5c..%5cadmin",
                [
                    "/a%5c..%5cadmin",
                    "/a%5c..%5cadmin",
                    "/a%5c..%5cadmin",
                    "/admin",
                ],
            ),
            (
                "/%252e%252e/admin",
                [
                    "/%252e%252e/admin",
                    "/%252e%252e/admin",
                    "/%252e%252e/admin",
                    "/%252e%252e/admin",
                ],
            ),
            ("/a%7eb", ["/a%7eb", "/a~b", "/a~b", "/a~b"]),
            ("/a\"b", ["/a\"b", "/a%22b", "/a%22b", "/a%22b"]),
            ("/a?b#c", ["/a", "/a", "/a", "/a"]),
            (
                "/%2Fapp%5cadmin%5Cabc",
                [
                    "/%2Fapp%5cadmin%5Cabc",
                    "/%2Fapp%5cadmin%5Cabc",
                    "/%2Fapp%5cadmin%5Cabc",
                    "/app/admin/abc",
                ],
            ),
            (
                "/%c0%2e%c0%2e/admin",
                [
                    "/%c0%2e%c0%2e/admin",
                    "/%c0.%c0./admin",
                    "/%c0.%c0./admin",
                    "/%c0.%c0./admin",
                ],
            ),
        ];
        for (input, expect) in rows {
            for (o, e) in [None, Base, MergeSlashes, DecodeAndMergeSlashes]
                .iter()
                .zip(expect)
            {
                assert_eq!(n(input, *o), *e, "input {input} option {o:?}");
            }
        }
    }

    #[test]
    fn refusals() {
        assert_eq!(normalize("", Base).unwrap_err(), PathError::Empty);
        assert_eq!(
            normalize("admin", Base).unwrap_err(),
            PathError::NotAbsolute
        );
        assert_eq!(
            normalize("/a b", Base).unwrap_err(),
            PathError::InvalidCharacter
        );
        assert_eq!(
            normalize("/é", Base).unwrap_err(),
            PathError::InvalidCharacter
        );
        assert_eq!(
            normalize("/a?q=1", Base).unwrap().query.as_deref(),
            Some("q=1")
        );
    }
}
