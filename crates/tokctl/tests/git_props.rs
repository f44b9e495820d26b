//! Property tests of the git credential helper's input parser (`tokctl::git::parse`):
//! CR or NUL anywhere (A3/A4) and a repeated single-valued key (A1) reject the input; any
//! valid set of `key=value` lines round-trips.

use proptest::prelude::*;
use std::collections::BTreeMap;
use tokctl::git::{parse, SINGLE};

/// Cases per property: 1024 rather than proptest's 256, the parser is fast.
const CASES: u32 = 1024;

/// A value git could send: any text without LF, CR or NUL (it may contain `=`).
fn value() -> impl Strategy<Value = String> {
    "[^\n\r\u{0}]{0,20}"
}

/// A valid request: some single-valued keys, `capability[]` and `wwwauth[]` lines.
fn request() -> impl Strategy<Value = (BTreeMap<String, String>, Vec<String>, Vec<String>)> {
    (
        prop::collection::btree_map(
            prop::sample::select(SINGLE.to_vec()).prop_map(String::from),
            value(),
            0..=6,
        ),
        prop::collection::vec(value(), 0..=3),
        prop::collection::vec(value(), 0..=3),
    )
}

/// The lines of a request, the single-valued ones spread among the others at positions
/// chosen by `seed` (git's order is not fixed); multi-valued lines keep their order.
fn lines(
    attrs: &BTreeMap<String, String>,
    caps: &[String],
    www: &[String],
    seed: usize,
) -> Vec<String> {
    let mut l: Vec<String> = caps.iter().map(|c| format!("capability[]={c}")).collect();
    l.extend(www.iter().map(|w| format!("wwwauth[]={w}")));
    for (i, (k, v)) in attrs.iter().enumerate() {
        let at = seed.rotate_right(7 * i as u32) % (l.len() + 1);
        l.insert(at, format!("{k}={v}"));
    }
    l
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Valid input parses to exactly what was sent, in any line order, with or without the
    /// terminating blank line.
    #[test]
    fn valid_input_round_trips((attrs, caps, www) in request(), seed in any::<usize>(), blank in any::<bool>()) {
        let mut text = lines(&attrs, &caps, &www, seed).join("\n");
        text.push('\n');
        if blank {
            text.push('\n');
        }
        let r = parse(text.as_bytes()).expect("valid input parses");
        prop_assert_eq!(&r.attrs, &attrs);
        // Multi-valued keys keep their relative order whatever the interleaving.
        prop_assert_eq!(&r.capabilities, &caps);
        prop_assert_eq!(&r.wwwauth, &www);
    }

    /// A3/A4: one CR or NUL anywhere in otherwise valid input rejects all of it.
    #[test]
    fn cr_or_nul_anywhere_is_rejected((attrs, caps, www) in request(), at in any::<prop::sample::Index>(), nul in any::<bool>()) {
        let mut text = lines(&attrs, &caps, &www, 0).join("\n");
        text.push('\n');
        let mut chars: Vec<char> = text.chars().collect();
        chars.insert(at.index(chars.len() + 1), if nul { '\0' } else { '\r' });
        let bad: String = chars.into_iter().collect();
        prop_assert!(parse(bad.as_bytes()).is_none(), "accepted {:?}", bad);
    }

    /// A1: a single-valued key given twice (same or different value) rejects the input,
    /// wherever the second copy goes before the blank line.
    #[test]
    fn duplicate_single_valued_keys_are_rejected(
        (mut attrs, caps, www) in request(),
        key in prop::sample::select(SINGLE.to_vec()),
        first in value(),
        second in value(),
        at in any::<prop::sample::Index>(),
    ) {
        attrs.insert(key.to_string(), first);
        let mut l = lines(&attrs, &caps, &www, 0);
        l.insert(at.index(l.len() + 1), format!("{key}={second}"));
        let text = l.join("\n") + "\n\n";
        prop_assert!(parse(text.as_bytes()).is_none(), "accepted {:?}", text);
    }
}
