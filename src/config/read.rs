//! Reading the TOML text into the typed tree without stopping at the first mistake.
//!
//! The text is parsed into a spanned TOML tree first; a syntax error stops there, with its line.
//! The tree is then read into [`Config`]. When a value does not fit its key, the mistake is
//! recorded, the value is taken out of the tree so that its key falls back to its default, and the
//! tree is read again, until it reads. A mistake costs one more pass, which for a file people
//! write is nothing, and serde (with `Positive`, `NonZero*` and the enums) stays the one judge of
//! what fits. Keys no type knows are collected on every pass, with the closest known key.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

use super::{Config, Problem};

/// A file has far fewer mistakes than this; the bound only keeps a tree that cannot be repaired
/// (which would be a bug here) from looping.
const MAX_PASSES: usize = 500;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

/// What reading found.
pub(super) struct Read {
    /// `None` only when the text is not TOML. Otherwise every value that did not fit is replaced
    /// by its key's default: complete enough to check the rest, never to serve.
    pub config: Option<Config>,
    pub problems: Vec<Problem>,
    /// Paths whose values were taken out. The checks of the meaning that run on the repaired
    /// tree would see their defaults, so what they say at (or around) these paths is not said.
    pub dropped: Vec<String>,
}

/// Original indices taken out of each array, by the array's original path: later passes see the
/// array shorter, and their paths are mapped back to what the file says.
type Removed = BTreeMap<String, Vec<usize>>;

pub(super) fn read(text: &str) -> Read {
    let original = match DeTable::parse(text) {
        Ok(tree) => tree,
        Err(e) => {
            let mut problem = Problem::new("(file)", e.message().trim(), "correct the TOML syntax");
            problem.line = e.span().map(|s| line_at(text, s.start));
            return Read {
                config: None,
                problems: vec![problem],
                dropped: Vec::new(),
            };
        }
    };
    let mut tree = original.clone();
    let mut removed = Removed::new();
    let mut unknown: Vec<Vec<Seg>> = Vec::new();
    let mut problems = Vec::new();
    let mut dropped = Vec::new();
    let mut config = None;
    for _ in 0..MAX_PASSES {
        let mut track = serde_path_to_error::Track::new();
        let mut ignored = Vec::new();
        let de = toml::Deserializer::from(tree.clone());
        let de = serde_path_to_error::Deserializer::new(de, &mut track);
        let result: Result<Config, toml::de::Error> =
            serde_ignored::deserialize(de, |path| ignored.push(ignored_segments(&path)));
        for path in ignored {
            let path = to_original(&path, &removed);
            if !unknown.contains(&path) {
                unknown.push(path);
            }
        }
        let e = match result {
            Ok(read) => {
                config = Some(read);
                break;
            }
            Err(e) => e,
        };
        let at = track_segments(&track.path());
        let mistake = Mistake::of(e.message().trim(), at);
        let in_file = to_original(&mistake.report, &removed);
        if mistake.unknown_key {
            if !unknown.contains(&in_file) {
                unknown.push(in_file);
            }
        } else {
            let mut problem = Problem::new(render(&in_file), mistake.message, mistake.hint);
            problem.line = e
                .span()
                .map(|s| line_at(text, s.start))
                .or_else(|| line_of(&original, &in_file, text));
            problems.push(problem);
            dropped.push(render(&in_file));
            dropped.push(render(&to_original(&mistake.remove, &removed)));
        }
        if !take_out(&mut tree, &mistake.remove, &mut removed) {
            // The tree cannot be repaired: what was found so far is reported, and nothing checks
            // the meaning of a tree that does not read.
            break;
        }
    }
    for array in removed.keys() {
        dropped.push(array.clone());
    }
    for path in unknown {
        problems.push(unknown_key(&original, &path, text));
    }
    problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
    Read {
        config,
        problems,
        dropped,
    }
}

/// A failed pass, understood: where to report it, what to take out, and how to fix it.
struct Mistake {
    report: Vec<Seg>,
    remove: Vec<Seg>,
    message: String,
    hint: String,
    /// A key a `deny_unknown_fields` type refused (resource templates): reported with the
    /// unknown keys.
    unknown_key: bool,
}

impl Mistake {
    fn of(message: &str, at: Vec<Seg>) -> Mistake {
        if let Some(field) = backticked_after(message, "missing field ") {
            let mut report = at.clone();
            report.push(Seg::Key(field.clone()));
            return Mistake {
                report,
                remove: at,
                message: "is missing".into(),
                hint: format!("add {field} = … (docs/configuration.md says what it takes)"),
                unknown_key: false,
            };
        }
        if let Some(field) = backticked_after(message, "unknown field ") {
            let mut report = at;
            // The path may already end at the refused key, depending on where serde stopped.
            if report.last() != Some(&Seg::Key(field.clone())) {
                report.push(Seg::Key(field.clone()));
            }
            return Mistake {
                remove: report.clone(),
                report,
                message: String::new(),
                hint: String::new(),
                unknown_key: true,
            };
        }
        let hint = hint_for(message, &at);
        Mistake {
            remove: at.clone(),
            report: at,
            message: message.to_string(),
            hint,
            unknown_key: false,
        }
    }
}

/// How to fix a value that does not fit, from serde's message and the key.
fn hint_for(message: &str, at: &[Seg]) -> String {
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        let mut words = backticked(rest);
        let typo = if words.is_empty() {
            String::new()
        } else {
            words.remove(0)
        };
        return match closest(&typo, words.iter().map(String::as_str)) {
            Some(best) => format!("did you mean `{best}`?"),
            None => format!("use one of {}", quoted_list(&words)),
        };
    }
    // The key the value belongs to (for a list's element, the list's).
    let key = at
        .iter()
        .rev()
        .find_map(|s| match s {
            Seg::Key(k) => Some(k.as_str()),
            Seg::Index(_) => None,
        })
        .unwrap_or_default();
    if key == "trusted_proxies" {
        return "write a network as address/prefix, with a prefix of at most /32 for IPv4 and /128 \
                for IPv6, e.g. \"10.0.0.0/8\" or \"fd00::/8\""
            .into();
    }
    if message.contains("must be positive") {
        return "use a duration longer than zero, e.g. \"30s\"".into();
    }
    if message.contains("duration") || message.contains("time unit") || message.contains("expected number at")
    {
        return "write a duration in quotes with a unit, e.g. \"250ms\", \"30s\", \"5m\" or \"1h\"".into();
    }
    if message.contains("untagged enum BoundValue") {
        return "write claim = \"value\" or claim = [\"value\", \"other\"]".into();
    }
    let expected = message.rsplit_once("expected ").map_or("", |(_, e)| e);
    if expected.starts_with("a nonzero") {
        return "write a whole number of at least 1, without quotes".into();
    }
    match expected {
        "usize" | "u64" | "u32" | "u16" | "u8" | "i64" | "an integer" => {
            "write a whole number, without quotes".into()
        }
        "a boolean" => "write true or false, without quotes".into(),
        "a string" => "write the value in double quotes".into(),
        "a sequence" => "write a list, e.g. [\"a\", \"b\"]".into(),
        e if e.starts_with("struct ") || e == "a map" => {
            "write a table: [section] on its own line, or { key = value }".into()
        }
        _ => "see docs/configuration.md for the expected type and format".into(),
    }
}

/// The unknown key at `path`, with the closest key its table knows.
fn unknown_key(original: &Spanned<DeTable<'_>>, path: &[Seg], text: &str) -> Problem {
    let (table, key) = match path.split_last() {
        Some((Seg::Key(key), table)) => (table, key.as_str()),
        _ => (path, ""),
    };
    let pattern = pattern(table);
    let hint = match known_keys(&pattern) {
        Some(known) => match closest(key, known.iter().copied()) {
            Some(best) => format!("did you mean `{best}`?"),
            None => match in_a_child_table(&pattern, key) {
                Some(child) => format!("did you mean `{child}.{key}`? It belongs in that table"),
                None => format!("remove it; this table knows {}", quoted_list(known)),
            },
        },
        None => match template_keys(&pattern).and_then(|known| closest(key, known.iter().copied())) {
            Some(best) => format!("did you mean `{best}`?"),
            None => "remove it or check its spelling against docs/configuration.md".into(),
        },
    };
    let mut problem = Problem::new(render(path), "unknown key", hint);
    problem.line = line_of(original, path, text);
    problem
}

/// The closest of `candidates` to `word`, if it is close enough to be what was meant: case,
/// `-` for `_` and a few typed letters apart.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let normal = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    let word = normal(word);
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(&word, &normal(c)), c))
        .filter(|(distance, c)| {
            let longer = word.chars().count().max(c.chars().count());
            let allowed = match longer {
                0..=3 => 1,
                4..=8 => 2,
                _ => 3,
            };
            *distance <= allowed
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c)
}

fn quoted_list<S: AsRef<str>>(words: &[S]) -> String {
    words
        .iter()
        .map(|w| format!("`{}`", w.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The words between backticks in `text`.
fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, w)| w.to_string())
        .collect()
}

/// The first backticked word after `prefix`, when `text` starts with it.
fn backticked_after(text: &str, prefix: &str) -> Option<String> {
    backticked(text.strip_prefix(prefix)?).into_iter().next()
}

/// The keys each table of the file knows, by its path with `[]` for any index. The names come
/// from the types (see [`fields_of`]), so only this list of tables has to be kept up to date.
fn known_keys(pattern: &str) -> Option<&'static [&'static str]> {
    use super::*;
    Some(match pattern {
        "" => fields_of::<Config>(),
        "runtime" => fields_of::<Runtime>(),
        "log" => fields_of::<Log>(),
        "server" => fields_of::<Server>(),
        "server.tls" => fields_of::<Tls>(),
        "server.limits" => fields_of::<Limits>(),
        "admin" => fields_of::<Admin>(),
        "audit" => fields_of::<Audit>(),
        "audit.otlp" => fields_of::<Otlp>(),
        "audit.otlp.headers[]" => fields_of::<OtlpHeader>(),
        "audit.spool" => fields_of::<AuditSpool>(),
        "identity_providers[]" => fields_of::<IdentityProvider>(),
        "identity_providers[].claims" => fields_of::<ClaimMapping>(),
        "identity_providers[].browser" => fields_of::<BrowserClient>(),
        "sessions" => fields_of::<Sessions>(),
        "sessions.redis" => fields_of::<Redis>(),
        "policy" => fields_of::<Policy>(),
        "tokens" => fields_of::<Tokens>(),
        "routes[]" => fields_of::<Route>(),
        "routes[].upstream" => fields_of::<Upstream>(),
        "routes[].cors" => fields_of::<Cors>(),
        "routes[].assertion" => fields_of::<Assertion>(),
        "routes[].upstream_credentials" => fields_of::<UpstreamCredentials>(),
        _ => return None,
    })
}

/// Every table path [`known_keys`] knows, for the child-table hint and the test that keeps the
/// list complete.
pub(super) const TABLES: [&str; 23] = [
    "",
    "runtime",
    "log",
    "server",
    "server.tls",
    "server.limits",
    "admin",
    "audit",
    "audit.otlp",
    "audit.otlp.headers[]",
    "audit.spool",
    "identity_providers[]",
    "identity_providers[].claims",
    "identity_providers[].browser",
    "sessions",
    "sessions.redis",
    "policy",
    "tokens",
    "routes[]",
    "routes[].upstream",
    "routes[].cors",
    "routes[].assertion",
    "routes[].upstream_credentials",
];

/// The keys of a resource template's tables (`resource_templates.<name>…`).
fn template_keys(pattern: &str) -> Option<&'static [&'static str]> {
    use super::templates::{EachDef, FilterDef, RuleDef, TemplateDef};
    let rest = pattern.strip_prefix("resource_templates.")?;
    let (_, inner) = rest.split_once('.').unwrap_or((rest, ""));
    Some(match inner {
        "" => fields_of::<TemplateDef>(),
        "rules[]" => fields_of::<RuleDef>(),
        "rules[].each[]" => fields_of::<EachDef>(),
        "rules[].filter" => fields_of::<FilterDef>(),
        _ => return None,
    })
}

/// A table directly below `pattern` that knows `key` exactly (a key written one table too high).
fn in_a_child_table(pattern: &str, key: &str) -> Option<String> {
    TABLES.iter().find_map(|child| {
        let name = match pattern {
            "" => *child,
            p => child.strip_prefix(p)?.strip_prefix('.')?,
        };
        let direct = !name.is_empty() && !name.contains('.');
        (direct && known_keys(child)?.contains(&key)).then(|| name.trim_end_matches("[]").to_string())
    })
}

/// The field names serde's derive gives a struct: it hands them to `deserialize_struct`, where
/// this deserializer catches them.
pub(super) fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    match T::deserialize(FieldNames) {
        Err(Caught(fields)) => fields,
        Ok(_) => &[],
    }
}

struct FieldNames;

#[derive(Debug)]
struct Caught(&'static [&'static str]);

impl std::fmt::Display for Caught {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("field names")
    }
}

impl std::error::Error for Caught {}

impl serde::de::Error for Caught {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Caught(&[])
    }
}

impl<'de> serde::Deserializer<'de> for FieldNames {
    type Error = Caught;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Caught> {
        Err(Caught(&[]))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Caught> {
        Err(Caught(fields))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// A path with every index written `[]` and a resource template's name kept: the table's kind.
fn pattern(path: &[Seg]) -> String {
    join(path, |k| k.to_string(), |_| "[]".to_string())
}

/// `routes[1].upstream.url`; keys that are not bare TOML keys are quoted.
pub(super) fn render(path: &[Seg]) -> String {
    let key = |k: &str| {
        let bare = !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if bare { k.to_string() } else { format!("{k:?}") }
    };
    let out = join(path, key, |i| format!("[{i}]"));
    if out.is_empty() { "(root)".into() } else { out }
}

/// Keys joined by dots, each index written right after its array: the one spelling both
/// renderings share.
fn join(path: &[Seg], key: impl Fn(&str) -> String, index: impl Fn(usize) -> String) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&key(k));
            }
            Seg::Index(i) => out.push_str(&index(*i)),
        }
    }
    out
}

/// The steps of a rendered path (`routes[1].upstream.url`, `audit.header_attributes."a.b"`);
/// `None` for a path that names no key (`(file)`).
pub(super) fn segments(path: &str) -> Option<Vec<Seg>> {
    if path.starts_with('(') {
        return None;
    }
    let mut out = Vec::new();
    let mut chars = path.chars().peekable();
    let mut key = String::new();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                for q in chars.by_ref() {
                    match q {
                        '"' => break,
                        q => key.push(q),
                    }
                }
            }
            '.' => {
                if !key.is_empty() {
                    out.push(Seg::Key(std::mem::take(&mut key)));
                }
            }
            '[' => {
                if !key.is_empty() {
                    out.push(Seg::Key(std::mem::take(&mut key)));
                }
                let mut digits = String::new();
                for d in chars.by_ref() {
                    if d == ']' {
                        break;
                    }
                    digits.push(d);
                }
                out.push(Seg::Index(digits.parse().ok()?));
            }
            c => key.push(c),
        }
    }
    if !key.is_empty() {
        out.push(Seg::Key(key));
    }
    Some(out)
}

fn track_segments(path: &serde_path_to_error::Path) -> Vec<Seg> {
    path.iter()
        .filter_map(|s| match s {
            serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
            serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
            serde_path_to_error::Segment::Enum { .. } | serde_path_to_error::Segment::Unknown => None,
        })
        .collect()
}

fn ignored_segments(path: &serde_ignored::Path<'_>) -> Vec<Seg> {
    let mut out = Vec::new();
    let mut at = path;
    loop {
        at = match at {
            serde_ignored::Path::Root => break,
            serde_ignored::Path::Seq { parent, index } => {
                out.push(Seg::Index(*index));
                parent
            }
            serde_ignored::Path::Map { parent, key } => {
                out.push(Seg::Key(key.clone()));
                parent
            }
            serde_ignored::Path::Some { parent }
            | serde_ignored::Path::NewtypeStruct { parent }
            | serde_ignored::Path::NewtypeVariant { parent } => parent,
        };
    }
    out.reverse();
    out
}

/// A path as the repaired tree has it, as the file has it.
fn to_original(path: &[Seg], removed: &Removed) -> Vec<Seg> {
    let mut out = Vec::with_capacity(path.len());
    for seg in path {
        match seg {
            Seg::Key(k) => out.push(Seg::Key(k.clone())),
            Seg::Index(i) => {
                let mut index = *i;
                if let Some(gone) = removed.get(&render(&out)) {
                    for g in gone {
                        if *g <= index {
                            index += 1;
                        }
                    }
                }
                out.push(Seg::Index(index));
            }
        }
    }
    out
}

/// Takes the value at `path` out of the tree; false when there is none to take.
fn take_out(tree: &mut Spanned<DeTable<'_>>, path: &[Seg], removed: &mut Removed) -> bool {
    if !take_from_table(tree.get_mut(), path) {
        return false;
    }
    // An array is now shorter: later paths into it are mapped back to the file's indices.
    let original = to_original(path, removed);
    if let Some((Seg::Index(index), array)) = original.split_last() {
        let gone = removed.entry(render(array)).or_default();
        gone.push(*index);
        gone.sort_unstable();
    }
    true
}

fn take_from_table(table: &mut DeTable<'_>, path: &[Seg]) -> bool {
    match path {
        [Seg::Key(k)] => table.remove(k.as_str()).is_some(),
        [Seg::Key(k), rest @ ..] => table
            .get_mut(k.as_str())
            .is_some_and(|v| take_from_value(v.get_mut(), rest)),
        _ => false,
    }
}

fn take_from_value(value: &mut DeValue<'_>, path: &[Seg]) -> bool {
    match (path, value) {
        (_, DeValue::Table(table)) => take_from_table(table, path),
        ([Seg::Index(i)], DeValue::Array(array)) => {
            if *i >= array.len() {
                return false;
            }
            let mut kept = DeArray::new();
            for (j, item) in array.iter().enumerate() {
                if j != *i {
                    kept.push(item.clone());
                }
            }
            *array = kept;
            true
        }
        ([Seg::Index(i), rest @ ..], DeValue::Array(array)) => array
            .get_mut(*i)
            .is_some_and(|v| take_from_value(v.get_mut(), rest)),
        _ => false,
    }
}

/// The line of the deepest key of `path` the file writes (a missing key: its table's line).
pub(super) fn line_of(tree: &Spanned<DeTable<'_>>, path: &[Seg], text: &str) -> Option<usize> {
    let mut span: Option<Range<usize>> = None;
    let mut table: Option<&DeTable<'_>> = Some(tree.get_ref());
    let mut array: Option<&DeArray<'_>> = None;
    for seg in path {
        let found = match seg {
            Seg::Key(k) => table
                .and_then(|t| t.get_key_value(k.as_str()))
                .map(|(key, value)| (key.span(), value)),
            Seg::Index(i) => array.and_then(|a| a.get(*i)).map(|value| (value.span(), value)),
        };
        let Some((at, value)) = found else {
            break;
        };
        span = Some(at);
        table = None;
        array = None;
        match value.get_ref() {
            DeValue::Table(t) => table = Some(t),
            DeValue::Array(a) => array = Some(a),
            _ => {}
        }
    }
    span.map(|s| line_at(text, s.start))
}

/// The line (from 1) of a byte offset.
pub(super) fn line_at(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(0, |t| t.matches('\n').count()) + 1
}

/// Fills in the line of every problem whose key the file writes.
pub(super) fn locate(text: &str, problems: &mut [Problem]) {
    let Ok(tree) = DeTable::parse(text) else {
        return;
    };
    for problem in problems.iter_mut().filter(|p| p.line.is_none()) {
        if let Some(path) = segments(&problem.path) {
            problem.line = line_of(&tree, &path, text);
        }
    }
}

/// Whether a problem is about a value that was taken out, or something that holds it. A warning
/// is a guess from its whole table, so any value taken out of that table silences it.
pub(super) fn overshadowed_problem(problem: &Problem, dropped: &[String]) -> bool {
    if overshadowed(&problem.path, dropped) {
        return true;
    }
    let table = segments(&problem.path).and_then(|mut path| path.pop().map(|_| render(&path)));
    !problem.is_error() && table.is_some_and(|t| overshadowed(&t, dropped))
}

fn overshadowed(path: &str, dropped: &[String]) -> bool {
    let under = |inner: &str, outer: &str| {
        inner == outer
            || outer == "(root)"
            || inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    };
    dropped.iter().any(|d| under(path, d) || under(d, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typo_gets_the_closest_known_word_and_nothing_far_is_suggested() {
        let keys = ["access", "hosts", "path_prefix", "upstream"];
        assert_eq!(closest("acess", keys), Some("access"));
        assert_eq!(closest("path-prefix", keys), Some("path_prefix"));
        assert_eq!(closest("Hosts", keys), Some("hosts"));
        assert_eq!(closest("colour", keys), None);
        assert_eq!(
            closest("keycloack", ["okta", "keycloak", "google"]),
            Some("keycloak")
        );
    }

    #[test]
    fn a_network_that_does_not_parse_says_which_half_is_wrong() {
        let says = |text: &str| {
            let toml = format!("[server]\ntrusted_proxies = [\"10.0.0.0/8\", {text:?}]");
            let problems = crate::config::parse(&toml).unwrap_err();
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].path, "server.trusted_proxies[1]");
            problems[0].message.clone()
        };
        assert!(says("10.0.0.0/33").contains("the prefix /33 is too long, an IPv4 network has at most /32"));
        assert!(says("fd00::/129").contains("an IPv6 network has at most /128"));
        assert!(says("10.0.0.1").contains("the address alone is \"10.0.0.1/32\""));
        assert!(says("10.0.0.300/8").contains("\"10.0.0.300\" is not an IP address"));
        assert!(says("10.0.0.0/x").contains("\"x\" is not a prefix length"));
        let config =
            crate::config::parse("[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1/128\"]").unwrap();
        assert_eq!(config.server.trusted_proxies.len(), 2);
    }

    #[test]
    fn every_mistake_is_reported_once_and_the_rest_of_the_file_still_reads() {
        let problems = crate::config::parse(
            r#"
            [server.limits]
            max_headers = "many"
            max_connections = 0
            [[routes]]
            name = "a"
            hosts = ["a.example.com", 5, 6]
            access = "publik"
            [[routes]]
            name = "b"
            timeout = 30
            colour = "red"
            "#,
        )
        .unwrap_err();
        let found: Vec<(&str, Option<usize>)> = problems.iter().map(|p| (p.path.as_str(), p.line)).collect();
        assert_eq!(
            found,
            [
                ("server.limits.max_headers", Some(3)),
                ("server.limits.max_connections", Some(4)),
                ("routes[0].hosts[1]", Some(7)),
                ("routes[0].hosts[2]", Some(7)),
                ("routes[0].access", Some(8)),
                ("routes[1].timeout", Some(11)),
                ("routes[1].colour", Some(12)),
            ],
            "{problems:#?}"
        );
        assert_eq!(problems[4].hint, "did you mean `public`?");
    }

    #[test]
    fn paths_render_and_read_back() {
        for path in [
            "routes[1].upstream.url",
            "audit.header_attributes.\"cicd.pipeline.run.id\"",
            "server",
            "identity_providers[0].bound_claims.\"project_path\"",
        ] {
            let segs = segments(path).unwrap_or_default();
            let again = render(&segs);
            assert_eq!(segments(&again), Some(segs), "{path}");
        }
        assert_eq!(segments("(file)"), None);
    }

    /// The configuration files under examples/ (policy test files aside).
    fn example_configs(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for path in entries.flatten().map(|e| e.path()) {
            if path.is_dir() && !path.ends_with("policies") {
                example_configs(&path, out);
            } else if path.extension().is_some_and(|e| e == "toml") {
                out.push(path);
            }
        }
    }

    #[test]
    fn every_table_of_the_example_configs_knows_its_keys() {
        let mut files = Vec::new();
        example_configs(std::path::Path::new("examples"), &mut files);
        assert!(files.len() > 10, "{files:?}");
        let mut tables = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            let tree = DeTable::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            walk(tree.get_ref(), &mut Vec::new(), &mut tables);
        }
        assert!(tables.contains(&"sessions.redis".to_string()), "{tables:?}");
        // Tables whose keys are the operator's own names.
        let maps = [
            "audit.header_attributes",
            "identity_providers[].bound_claims",
            "routes[].assertion.claims",
        ];
        for table in tables {
            if maps.contains(&table.as_str()) || table.starts_with("resource_templates") {
                continue;
            }
            assert!(
                known_keys(&table).is_some_and(|k| !k.is_empty()),
                "no known keys for [{table}]: add it to known_keys and TABLES"
            );
            assert!(TABLES.contains(&table.as_str()), "{table} is not in TABLES");
        }
        for table in TABLES {
            assert!(known_keys(table).is_some_and(|k| !k.is_empty()), "{table}");
        }
    }

    fn walk(table: &DeTable<'_>, at: &mut Vec<Seg>, out: &mut Vec<String>) {
        let here = pattern(at);
        if !out.contains(&here) {
            out.push(here);
        }
        for (key, value) in table.iter() {
            at.push(Seg::Key(key.get_ref().to_string()));
            match value.get_ref() {
                DeValue::Table(t) => walk(t, at, out),
                DeValue::Array(a) => {
                    for (i, item) in a.iter().enumerate() {
                        if let DeValue::Table(t) = item.get_ref() {
                            at.push(Seg::Index(i));
                            walk(t, at, out);
                            at.pop();
                        }
                    }
                }
                _ => {}
            }
            at.pop();
        }
    }
}
