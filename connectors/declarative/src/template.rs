//! Spec templates: text with `{{ name }}` placeholders and nothing else (no logic, no
//! filters), so a spec can be validated completely before anything runs.
//!
//! Names: `config.<option>` (a source option), and in request parameters and bodies also
//! `since` (the start of the changes asked for, in the stream's time format) and
//! `page_size`.

/// A parsed template: literal text and placeholders, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(String),
}

impl Template {
    /// Parses `text`; an unclosed `{{` or an empty placeholder is an error.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| format!("`{text}`: `{{{{` without a closing `}}}}`"))?;
            let name = after[..close].trim();
            if name.is_empty() {
                return Err(format!("`{text}`: an empty `{{{{ }}}}`"));
            }
            parts.push(Part::Var(name.to_owned()));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template { parts })
    }

    /// Checks every placeholder names something that exists: a declared option among
    /// `options`, or (when `request`) `since` or `page_size`.
    pub fn check(&self, options: &[&str], request: bool) -> Result<(), String> {
        self.check_with(options, request, None)
    }

    /// As [`Template::check`], also allowing `{{ parent.<key> }}` when `parent_key` is the
    /// key of the stream's parent.
    pub fn check_with(
        &self,
        options: &[&str],
        request: bool,
        parent_key: Option<&str>,
    ) -> Result<(), String> {
        for name in self.vars() {
            if let Some(key) = name.strip_prefix("parent.") {
                match parent_key {
                    Some(k) if k == key => continue,
                    Some(k) => {
                        return Err(format!(
                            "`{{{{ {name} }}}}`: the parent's key is `{k}` (`{{{{ parent.{k} }}}}`)"
                        ));
                    }
                    None => {
                        return Err(format!(
                            "`{{{{ {name} }}}}` needs a `parent` stream declared for this stream"
                        ));
                    }
                }
            }
            if let Some(option) = name.strip_prefix("config.") {
                if !options.contains(&option) {
                    return Err(format!(
                        "`{{{{ {name} }}}}` names option `{option}`, which `[config]` does not declare"
                    ));
                }
            } else if !(request && matches!(name, "since" | "page_size")) {
                return Err(format!(
                    "`{{{{ {name} }}}}` is not a template name here; use `config.<option>`{}",
                    if request {
                        ", `since` or `page_size`"
                    } else {
                        ""
                    }
                ));
            }
        }
        Ok(())
    }

    /// Whether placeholder `name` appears.
    pub fn uses(&self, name: &str) -> bool {
        self.vars().any(|v| v == name)
    }

    /// The placeholder names, in order.
    pub fn vars(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v) => Some(v.as_str()),
            Part::Text(_) => None,
        })
    }

    /// The text with each placeholder replaced by `lookup(name)` (empty when `None`).
    pub fn render(&self, lookup: impl Fn(&str) -> Option<String>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) => out.push_str(&lookup(v).unwrap_or_default()),
            }
        }
        out
    }
}

/// Renders `text` (already validated) with `lookup`; a text that does not parse comes back
/// as it is.
pub fn render(text: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    match Template::parse(text) {
        Ok(t) => t.render(lookup),
        Err(_) => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_checks_names() {
        let t = Template::parse("https://{{ config.site }}.example.com/{{since}}").unwrap();
        assert!(t.uses("since"));
        assert_eq!(
            t.render(|n| Some(n.to_uppercase())),
            "https://CONFIG.SITE.example.com/SINCE"
        );
        assert!(t.check(&["site"], true).is_ok());
        let err = t.check(&["site"], false).unwrap_err();
        assert!(err.contains("since"), "{err}");
        let err = t.check(&["other"], true).unwrap_err();
        assert!(err.contains("`site`"), "{err}");
        assert!(Template::parse("{{ open").is_err());
        assert!(Template::parse("{{ }}").is_err());
    }
}
