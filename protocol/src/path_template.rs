//! Path templates: `/v1/agents/[user]/summary` filled from a matched route's `[name]` captures.
//! Used for `upstream_path` rewrites and to go between a leased resource and its lease path.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Param(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("{0:?} must start with '/'")]
    NotAbsolute(String),
    #[error("{template:?}: segment {segment:?} must be literal text or a whole `[name]`")]
    BadSegment { template: String, segment: String },
    #[error("{template:?}: `[{param}]` is not captured by the route's path")]
    UnknownParam { template: String, param: String },
}

impl PathTemplate {
    /// Parses `template`, whose every `[name]` must be one of `params` (the route path's
    /// captures), so a rewrite can never need a value the request did not give.
    pub fn parse(template: &str, params: &[&str]) -> Result<PathTemplate, TemplateError> {
        let Some(rest) = template.strip_prefix('/') else {
            return Err(TemplateError::NotAbsolute(template.to_owned()));
        };
        let mut parts = Vec::new();
        for segment in rest.split('/') {
            let bad = || TemplateError::BadSegment {
                template: template.to_owned(),
                segment: segment.to_owned(),
            };
            let name = segment.strip_prefix('[').and_then(|s| s.strip_suffix(']'));
            match name {
                Some(name) => {
                    if !params.contains(&name) {
                        return Err(TemplateError::UnknownParam {
                            template: template.to_owned(),
                            param: name.to_owned(),
                        });
                    }
                    parts.push(Part::Param(name.to_owned()));
                }
                None if segment.contains(['[', ']', '?', '#', '*']) => return Err(bad()),
                None => parts.push(Part::Literal(segment.to_owned())),
            }
        }
        Ok(PathTemplate { parts })
    }

    /// The `[name]`s, in order.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Param(n) => Some(n.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// Whether some captures render this template to exactly `path` (no query). A captured
    /// segment may be anything.
    pub fn can_render(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let segments: Vec<&str> = rest.split('/').collect();
        segments.len() == self.parts.len()
            && self
                .parts
                .iter()
                .zip(&segments)
                .all(|(part, segment)| match part {
                    Part::Literal(l) => l == segment,
                    Part::Param(_) => true,
                })
    }

    /// The path with each `[name]` replaced by its captured (still percent-encoded) value.
    pub fn render(&self, captures: &[(String, String)]) -> String {
        let mut out = String::new();
        for part in &self.parts {
            out.push('/');
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Param(name) => {
                    if let Some((_, v)) = captures.iter().find(|(n, _)| n == name) {
                        out.push_str(v);
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_captures() {
        let t = PathTemplate::parse("/v1/agents/[user]/summary", &["user", "x"]).unwrap();
        assert_eq!(t.params().collect::<Vec<_>>(), ["user"]);
        let captures = [("user".to_owned(), "al%20ice".to_owned())];
        assert_eq!(t.render(&captures), "/v1/agents/al%20ice/summary");
        let root = PathTemplate::parse("/", &[]).unwrap();
        assert_eq!(root.render(&[]), "/");
    }

    #[test]
    fn knows_which_paths_it_can_render() {
        let t = PathTemplate::parse("/v1/agents/[user]/summary", &["user"]).unwrap();
        assert!(t.can_render("/v1/agents/bob/summary"));
        assert!(!t.can_render("/v1/agents/bob"));
        assert!(!t.can_render("/v1/agents/bob/summary/x"));
        assert!(!t.can_render("/v2/agents/bob/summary"));
        assert!(!t.can_render("v1/agents/bob/summary"));
    }

    #[test]
    fn refuses_unknown_or_malformed() {
        assert_eq!(
            PathTemplate::parse("/v1/[who]", &["user"]),
            Err(TemplateError::UnknownParam {
                template: "/v1/[who]".into(),
                param: "who".into()
            })
        );
        assert!(matches!(
            PathTemplate::parse("v1", &[]),
            Err(TemplateError::NotAbsolute(_))
        ));
        for bad in ["/a[b]", "/a/*", "/a?x", "/[x"] {
            assert!(
                matches!(
                    PathTemplate::parse(bad, &["x", "b"]),
                    Err(TemplateError::BadSegment { .. })
                ),
                "{bad}"
            );
        }
    }
}
