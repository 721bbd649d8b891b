//! Claim expressions: how a provider's subject, name, client and extra groups are read from a
//! token's claims. Parsed here from the configuration's text; read against claims by
//! `authn::claims::render`.
//!
//! ```text
//! sub                                  one claim
//! uid|sub                              the first of these claims that is present
//! project:{project_id}:{ref_type}:{ref}  literal text and claims (each may list alternatives)
//! ```

use std::fmt;

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Literal(String),
    /// Claim paths tried in order; the first present one gives the value.
    Claim(Vec<String>),
}

/// A parsed claim expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimTemplate {
    pub parts: Vec<Part>,
    text: String,
}

impl ClaimTemplate {
    /// `text` as written in the configuration; errors say what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        if !text.contains(['{', '}']) {
            return Ok(ClaimTemplate {
                parts: vec![Part::Claim(alternatives(text)?)],
                text: text.to_string(),
            });
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    parts.push(Part::Literal(rest.to_string()));
                    rest = "";
                }
                Some(i) if rest.as_bytes().get(i) == Some(&b'}') => {
                    return Err(format!("`}}` without `{{` in {text:?}"));
                }
                Some(i) => {
                    if i > 0 {
                        parts.push(Part::Literal(rest.get(..i).unwrap_or_default().to_string()));
                    }
                    let after = rest.get(i + 1..).unwrap_or_default();
                    let Some(end) = after.find('}') else {
                        return Err(format!("`{{` without `}}` in {text:?}"));
                    };
                    let inner = after.get(..end).unwrap_or_default();
                    if inner.contains('{') {
                        return Err(format!("nested `{{` in {text:?}"));
                    }
                    parts.push(Part::Claim(alternatives(inner)?));
                    rest = after.get(end + 1..).unwrap_or_default();
                }
            }
        }
        Ok(ClaimTemplate {
            parts,
            text: text.to_string(),
        })
    }

    /// A template reading one claim.
    pub fn claim(path: &str) -> Self {
        ClaimTemplate {
            parts: vec![Part::Claim(vec![path.to_string()])],
            text: path.to_string(),
        }
    }

    /// Every claim path the template reads.
    pub fn claims(&self) -> impl Iterator<Item = &str> {
        self.parts
            .iter()
            .flat_map(|p| match p {
                Part::Claim(paths) => paths.as_slice(),
                Part::Literal(_) => &[],
            })
            .map(String::as_str)
    }
}

impl fmt::Display for ClaimTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn alternatives(text: &str) -> Result<Vec<String>, String> {
    let paths: Vec<String> = text.split('|').map(|p| p.trim().to_string()).collect();
    if let Some(bad) = paths
        .iter()
        .find(|p| p.is_empty() || p.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(format!(
            "{bad:?} in {text:?} is not a claim path: write claim names, dotted for nested claims, `|` between alternatives"
        ));
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_alternatives_and_templates_parse() {
        assert_eq!(
            ClaimTemplate::parse("sub").unwrap().parts,
            [Part::Claim(vec!["sub".into()])]
        );
        assert_eq!(
            ClaimTemplate::parse("uid|sub").unwrap().parts,
            [Part::Claim(vec!["uid".into(), "sub".into()])]
        );
        let t = ClaimTemplate::parse("project:{project_id}:{ref_type}:{ref}").unwrap();
        assert_eq!(
            t.parts,
            [
                Part::Literal("project:".into()),
                Part::Claim(vec!["project_id".into()]),
                Part::Literal(":".into()),
                Part::Claim(vec!["ref_type".into()]),
                Part::Literal(":".into()),
                Part::Claim(vec!["ref".into()]),
            ]
        );
        assert_eq!(t.to_string(), "project:{project_id}:{ref_type}:{ref}");
        assert_eq!(t.claims().collect::<Vec<_>>(), ["project_id", "ref_type", "ref"]);
    }

    #[test]
    fn broken_templates_say_what_is_wrong() {
        for bad in ["", "a||b", "x:{", "x:}", "{a{b}}", "{}", "has space"] {
            assert!(ClaimTemplate::parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
