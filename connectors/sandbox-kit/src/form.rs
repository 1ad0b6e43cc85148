//! Query strings and form bodies as vendors read them: `a=1&b=x+y`, percent-decoded, in
//! order, repeated keys kept; nested keys `metadata[order][id]` split into their path.

/// `a=1&b=x+y` → pairs, percent-decoded, in order (repeated keys kept).
pub fn parse_pairs(input: &str) -> Vec<(String, String)> {
    input
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// `%41` → `A`, `+` → space; a `%` not followed by two hex digits stays as it is.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%'
            && let Some(byte) = bytes
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(if b == b'+' { b' ' } else { b });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `metadata[order][id]` → `["metadata", "order", "id"]`; `types[]` → `["types", ""]`.
pub fn split_key(name: &str) -> Vec<String> {
    let (head, mut rest) = match name.find('[') {
        Some(at) => (&name[..at], &name[at..]),
        None => return vec![name.to_owned()],
    };
    let mut path = vec![head.to_owned()];
    while let Some(inner) = rest.strip_prefix('[') {
        let Some(end) = inner.find(']') else {
            break;
        };
        path.push(inner[..end].to_owned());
        rest = &inner[end + 1..];
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_decoded_in_order() {
        assert_eq!(
            parse_pairs("a=1&b=x+y&a=%C3%A9&&c"),
            vec![
                ("a".to_owned(), "1".to_owned()),
                ("b".to_owned(), "x y".to_owned()),
                ("a".to_owned(), "é".to_owned()),
                ("c".to_owned(), String::new()),
            ]
        );
    }

    #[test]
    fn stray_percent_signs_stay() {
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%2"), "%2");
        assert_eq!(percent_decode("%+1"), "% 1", "'+1' is not two hex digits");
        assert_eq!(percent_decode("page%5Bafter%5D"), "page[after]");
    }

    #[test]
    fn nested_keys_split() {
        assert_eq!(
            split_key("metadata[order][id]"),
            ["metadata", "order", "id"]
        );
        assert_eq!(split_key("types[]"), ["types", ""]);
        assert_eq!(split_key("plain"), ["plain"]);
        assert_eq!(split_key("a[b"), ["a"]);
    }
}
